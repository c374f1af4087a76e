"""The size limits of protocol.py ("Limits") where they are applied: the broker's reply cap, the event size cap, log
line and error clipping in the worker's PluginContext, `logs` count, `invoke` responses, and `[build] timeout_s`."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import types
import uuid
from pathlib import Path

import psutil
import pytest
import zmq

from omnibroker import protocol
from omnibroker.control import Control
from omnibroker.commands import COMMANDS
from omnibroker.errors import CommandError
from omnibroker.events import EventBus
from omnibroker.settings import SettingsError
from omniworker.context import NullSink, PluginContext
from omniworker.devserver import DevServer
from omniworker.gobuild import Builder
from omniworker.state import Mode


def sent_reply(reply: protocol.Reply) -> dict:
    sent = []
    fake = types.SimpleNamespace(stream=types.SimpleNamespace(send=lambda frames: sent.append(frames) or True))
    Control._reply(fake, [b"client"], reply)
    assert sent[0][0] == b"client"
    return protocol.decode_json(sent[0][-1])


def test_a_reply_over_the_limit_becomes_too_large():
    big = sent_reply(protocol.ok_reply("r1", {"x": "y" * protocol.MAX_REPLY_BYTES}))
    assert big["id"] == "r1" and big["status"] == "error" and big["code"] == "too_large"
    assert str(protocol.MAX_REPLY_BYTES) in big["reason"]
    small = sent_reply(protocol.ok_reply("r2", {"x": "y" * 1000}))
    assert small["status"] == "ok" and small["result"]["x"] == "y" * 1000


def test_an_event_over_the_limit_is_not_published_and_a_log_line_says_so():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind("inproc://limits-events")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://limits-events")
    assert pub.poll(2000) and pub.recv()        # the subscription
    bus = EventBus(pub)
    ok = protocol.encode(protocol.log_payload("p", "plugin", "info", "fine"))
    huge = protocol.encode(protocol.log_payload("p", "plugin", "info", "z" * protocol.MAX_EVENT_BYTES))
    bus.worker_status(protocol.LOG, ok, "p")
    bus.worker_status(protocol.LOG, huge, "p")
    first, second = sub.recv_multipart(), sub.recv_multipart()
    assert first[1] == ok
    entry = protocol.decode_json(second[1])[0]
    assert entry["source"] == "manager" and entry["level"] == "error"
    assert str(len(huge)) in entry["message"] and str(protocol.MAX_EVENT_BYTES) in entry["message"]
    assert not sub.poll(50)
    ctx.destroy(linger=0)


def context() -> tuple[PluginContext, NullSink]:
    sink = NullSink()
    return PluginContext(protocol.PluginSpec(id="p", path="/tmp"), sink), sink


def test_long_log_lines_and_last_errors_are_clipped_and_say_so():
    ctx, sink = context()
    ctx.log("vite", "info", "a" * 10_000)
    message = sink.events[-1][1][0]["message"]
    assert message.startswith("a" * protocol.MAX_LOG_MESSAGE) and "5904 more characters cut" in message
    assert ctx.logs.tail(1)[0].message == message
    ctx.mode.set_error("b" * 10_000)
    assert ctx.state.lastError.startswith("b" * protocol.MAX_LOG_MESSAGE) and "cut" in ctx.state.lastError


def test_an_error_event_keeps_the_errors_that_fit_and_counts_the_rest():
    ctx, sink = context()
    errors = [protocol.BuildError(file="pkg/x.go", line=i, message="m" * 2000) for i in range(500)]
    ctx.errors(errors)
    topic, payload = sink.events[-1]
    assert topic == protocol.ERROR
    assert len(protocol.encode(payload)) <= protocol.MAX_EVENT_BYTES
    shown = payload["errors"][:-1]
    assert shown and [e["line"] for e in shown] == list(range(len(shown)))
    assert payload["errors"][-1]["message"].startswith(f"{500 - len(shown)} more errors not shown")


@pytest.mark.parametrize("count", [-1, protocol.MAX_LOG_COUNT + 1])
def test_logs_count_out_of_range_is_refused(count):
    with pytest.raises(CommandError) as e:
        COMMANDS["logs"].validate({"plugin": "p", "count": count})
    assert e.value.code == "bad_property" and str(protocol.MAX_LOG_COUNT) in e.value.reason
    assert COMMANDS["logs"].validate({"plugin": "p", "count": protocol.MAX_LOG_COUNT})["count"] == 5000


def test_an_invoke_response_over_the_limit_is_too_large():
    ctx, _ = context()
    ds = DevServer(ctx)
    ctx.mode.change_state(Mode.MANAGED)

    class Plugin:
        def __init__(self, size: int):
            self.size = size

        async def invoke(self, method, request, timeout):
            return b"r" * self.size

    ds.go = Plugin(protocol.MAX_INVOKE_RESPONSE_BYTES)
    ok = asyncio.run(ds.invoke("/a.B/C", "", 1.0))
    assert len(protocol.encode(protocol.ok_reply("some-request-id", ok))) <= protocol.MAX_REPLY_BYTES
    ds.go = Plugin(protocol.MAX_INVOKE_RESPONSE_BYTES + 1)
    with pytest.raises(CommandError) as e:
        asyncio.run(ds.invoke("/a.B/C", "", 1.0))
    assert e.value.code == "too_large" and str(protocol.MAX_INVOKE_RESPONSE_BYTES) in e.value.reason


def test_a_build_over_its_timeout_is_killed_with_its_process_group(tmp_path):
    mark = uuid.uuid4().hex         # in the build's environment: finds its processes, whoever adopted them
    settings = {"build": {"command": ["sh", "-c", "sleep 3600 & sleep 3600"], "timeout_s": 0.5,
                          "env": {"LIMITS_TEST_MARK": mark}}}
    ctx = PluginContext(protocol.PluginSpec(id="p", path=str(tmp_path), settings=settings), NullSink())
    result = asyncio.run(Builder(ctx).build())
    assert not result.ok and result.timed_out == 0.5
    assert result.summary().startswith("build timed out after 0.5 s")
    assert not [p for p in psutil.process_iter() if _environ(p).get("LIMITS_TEST_MARK") == mark]


def _environ(p: psutil.Process) -> dict:
    try:
        return p.environ()
    except psutil.Error:
        return {}


@pytest.mark.parametrize("value", [0, -1, "10", True, float("inf")])
def test_a_bad_timeout_setting_is_refused_naming_it(tmp_path, value):
    with pytest.raises(SettingsError) as e:
        PluginContext(protocol.PluginSpec(id="p", path=str(tmp_path), settings={"build": {"timeout_s": value}}),
                      NullSink())
    assert e.value.key == "build.timeout_s"


def test_omnictl_logs_says_when_older_entries_were_left_out():
    from omnibroker.ctl import _human
    entry = {"timestamp": "t", "source": "vite", "level": "info", "message": "m"}
    assert _human("logs", {"entries": [entry], "omitted": 3}).splitlines() == [
        "(3 older entries left out: a reply is limited to 1 MiB)", "t vite     info  m"]
    assert _human("logs", {"entries": [entry], "omitted": 0}) == "t vite     info  m"


def test_the_invoke_help_names_the_response_limit():
    assert f"{protocol.MAX_INVOKE_RESPONSE_BYTES:,} bytes" in COMMANDS["invoke"].__doc__


TRIM_PROBE = r"""
from omnibroker.heap import Trimmer, _rss_bytes
trimmer = Trimmer()
start = _rss_bytes()
blocks, pins = [], []
for i in range(6000):                   # 60 MB from malloc's heap (blocks far under its mmap threshold) ...
    blocks.append(bytes(10_000))
    if i % 100 == 99:
        pins.append(bytes(1000))        # ... with live blocks between them: free() alone cannot shrink the heap
del blocks
held = _rss_bytes()
first = trimmer.check()
after = _rss_bytes()
print(start, held, first, after, trimmer.check())
"""


def test_freed_heap_memory_is_given_back_once():
    """In a fresh interpreter (this one's heap holds what earlier tests freed)."""
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    start, held, first, after, second = int(out[0]), int(out[1]), out[2], int(out[3]), out[4]
    assert held > start + (40 << 20), out
    assert first == "True" and after < start + (10 << 20), out
    assert second == "False", out            # nothing new to give back: no second trim
