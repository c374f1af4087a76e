"""The command table: Command.validate, and each command's two halves (`execute` in the broker, `work` in the
worker) against small fakes — no broker, no worker, no processes."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import msgspec
import pytest

from omnibroker import protocol
from omnibroker.commands import COMMANDS, Command, Prop
from omnibroker.errors import CommandError, ErrorCode

FORWARDED = {"start", "stop", "restart", "rebuild", "attach", "detach", "logs", "external_info", "invoke"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


# --- the table -----------------------------------------------------------------------------------------------------

def test_flags_of_the_table():
    assert {n for n, c in COMMANDS.items() if c.forward} == FORWARDED
    assert {n for n, c in COMMANDS.items() if c.exclusive} == {"add", "remove", "start", "stop", "restart", "attach",
                                                               "detach"}
    assert {n for n, c in COMMANDS.items() if c.starts_worker} == {"start", "restart", "attach"}
    for name in FORWARDED:      # every forwarded command has its worker half
        assert type(COMMANDS[name]).work is not Command.work, name
    for name, cmd in COMMANDS.items():
        assert cmd.name == name and cmd.__doc__


# --- Command.validate ----------------------------------------------------------------------------------------------

class Sample(Command):
    name = "sample"
    properties = {"plugin": Prop(str, "id", required=True), "n": Prop(int, "a number", default=3),
                  "flag": Prop(bool, "a flag"), "t": Prop((int, float), "seconds", default=1.0),
                  "d": Prop(dict, "a table")}


def test_validate_fills_defaults_and_keeps_given_values():
    assert Sample().validate({"plugin": "p"}) == {"plugin": "p", "n": 3, "t": 1.0}
    assert Sample().validate({"plugin": "p", "n": 5, "flag": False, "t": 2, "d": {}}) == \
        {"plugin": "p", "n": 5, "flag": False, "t": 2, "d": {}}
    assert Sample().validate({"plugin": "p", "n": None}) == {"plugin": "p", "n": 3, "t": 1.0}   # None = not given


@pytest.mark.parametrize("props, words", [
    ({}, "property 'plugin' is required"),
    ({"plugin": None}, "property 'plugin' is required"),
    ({"plugin": "p", "typo": 1}, "unknown properties ['typo']"),
    ({"plugin": 1}, "property 'plugin' must be str, not int"),
    ({"plugin": "p", "n": True}, "property 'n' must be int, not bool"),      # a bool is no number here
    ({"plugin": "p", "n": 1.5}, "property 'n' must be int, not float"),
    ({"plugin": "p", "flag": 1}, "property 'flag' must be bool, not int"),
    ({"plugin": "p", "t": "1"}, "property 't' must be int or float, not str"),
    ({"plugin": "p", "t": False}, "property 't' must be int or float, not bool"),
    ({"plugin": "p", "d": []}, "property 'd' must be dict, not list"),
])
def test_validate_refuses_by_name(props, words):
    with pytest.raises(CommandError) as err:
        Sample().validate(props)
    assert err.value.code == ErrorCode.BAD_PROPERTY and words in err.value.reason, err.value.reason


def test_logs_validate_checks_count_and_source():
    logs = COMMANDS["logs"]
    assert logs.validate({"plugin": "p", "source": "vite"}) == {"plugin": "p", "count": 200, "source": "vite"}
    for bad in ({"plugin": "p", "count": -1}, {"plugin": "p", "count": protocol.MAX_LOG_COUNT + 1},
                {"plugin": "p", "source": "nginx"}):
        with pytest.raises(CommandError) as err:
            logs.validate(bad)
        assert err.value.code == ErrorCode.BAD_PROPERTY


# --- broker halves -------------------------------------------------------------------------------------------------

class FakeBroker:
    """Records what the commands hand to the broker."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.config = SimpleNamespace(reload=self._reload, error="")

    async def change_mode(self, cmd, props, mode, *, only_from=None):
        self.calls.append(("change_mode", cmd.name, dict(props), mode, only_from))
        return "state"

    async def forward(self, cmd, props, *, vite_port=0):
        self.calls.append(("forward", cmd.name, dict(props), vite_port))
        return "result"

    async def remove_plugin(self, plugin):
        self.calls.append(("remove_plugin", plugin))

    async def _reload(self):
        self.calls.append(("reload",))
        return {"configError": ""}


@pytest.mark.parametrize("name, mode, only_from", [
    ("start", "managed", None), ("stop", "idle", None), ("restart", None, None), ("attach", "external", None),
    ("detach", "idle", "external")])
def test_mode_commands_hand_their_policy_to_change_mode(name, mode, only_from):
    broker = FakeBroker()
    assert run(COMMANDS[name].execute(broker, {"plugin": "p"})) == "state"
    assert broker.calls == [("change_mode", name, {"plugin": "p"}, mode, only_from)]


@pytest.mark.parametrize("name, answer", [
    ("logs", "result"), ("external_info", "result"), ("invoke", "result"),
    ("rebuild", {"pluginID": "p", "accepted": True})])
def test_other_forwarded_commands_forward(name, answer):
    broker = FakeBroker()
    assert run(COMMANDS[name].execute(broker, {"plugin": "p"})) == answer
    assert broker.calls == [("forward", name, {"plugin": "p"}, 0)]


def test_broker_only_commands():
    broker = FakeBroker()
    broker.registry = SimpleNamespace(get=lambda plugin: None)
    assert run(COMMANDS["remove"].execute(broker, {"plugin": "p"})) == {"removed": "p"}
    assert run(COMMANDS["reload"].execute(broker, {})) == {"configError": ""}
    assert broker.calls == [("remove_plugin", "p"), ("reload",)]
    broker.events = SimpleNamespace(epoch="e1", snapshot=lambda: {"epoch": "e1", "seq": 4, "plugins": {}})
    assert COMMANDS["ping"].run(broker, {}) == {"epoch": "e1", "version": protocol.VERSION, "configError": ""}
    assert COMMANDS["snapshot"].run(broker, {}) == {"epoch": "e1", "seq": 4, "plugins": {}, "configError": ""}


# --- worker halves -------------------------------------------------------------------------------------------------

class FakeDevServer:
    """Records what the commands ask of the DevServer."""

    def __init__(self):
        self.calls: list[tuple] = []
        entries = [protocol.LogEntry(timestamp="t", pluginID="p", source="vite", level="info", message=str(i))
                   for i in range(3)]
        self.ctx = SimpleNamespace(logs=SimpleNamespace(tail=lambda count, source: (
            self.calls.append(("tail", count, source)), entries[-count:] if count else [])[1]))

    def __getattr__(self, name):
        async def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return {"response": "b64"} if name == "invoke" else None
        return call

    def external_info(self):
        self.calls.append(("external_info",))
        return {"pid": 7}


@pytest.mark.parametrize("name, props, call, result", [
    ("start", {"vite": False, "go": True, "vitePort": 15180},
     ("start", (), {"vite": False, "go": True, "vite_port": 15180, "debug_port": 0}), None),
    ("start", {"vitePort": 15180, "debugPort": 2345},
     ("start", (), {"vite": True, "go": True, "vite_port": 15180, "debug_port": 2345}), None),
    ("stop", {}, ("stop", (), {}), None),
    ("restart", {"vitePort": 15181}, ("restart", (), {"vite_port": 15181, "debug_port": 0}), None),
    ("restart", {"debugPort": 2346}, ("restart", (), {"vite_port": 0, "debug_port": 2346}), None),
    ("rebuild", {}, ("rebuild", (), {}), None),
    ("attach", {}, ("attach", (), {}), None),
    ("detach", {}, ("detach", (), {}), None),
    ("external_info", {}, ("external_info",), {"info": {"pid": 7}}),
    ("invoke", {"method": "/a.B/C", "request": "AA==", "timeout": 3},
     ("invoke", ("/a.B/C", "AA==", 3.0), {}), {"response": "b64"}),
])
def test_worker_halves(name, props, call, result):
    ds = FakeDevServer()
    forwarded = protocol.decode_forwarded(dict(props, plugin="p"))
    assert run(COMMANDS[name].work(ds, forwarded)) == result
    assert ds.calls == [call]


def test_logs_worker_half_returns_what_fits():
    ds = FakeDevServer()
    out = run(COMMANDS["logs"].work(ds, protocol.decode_forwarded({"plugin": "p", "count": 2, "source": "vite"})))
    assert ds.calls == [("tail", 2, "vite")]
    assert [e["message"] for e in out["entries"]] == ["1", "2"] and out["omitted"] == 0


def test_forwarded_shape_is_typed():
    """What the broker sends the worker: the command's properties plus the broker's `vitePort`, nothing else."""
    assert protocol.to_builtins(protocol.Forwarded(plugin="p", vitePort=15173)) == {"plugin": "p", "vitePort": 15173}
    for bad in ({"plugin": "p", "path": "/x"}, {"plugin": "p", "vitePort": "15173"}, {}):
        with pytest.raises(msgspec.ValidationError):
            protocol.decode_forwarded(bad)
