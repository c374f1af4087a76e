"""omnibridge.testing.FakeBroker is the broker's EventBus and command table without plugins: its events carry the
bus's stamps (epoch, seq from 1, ts, pluginID), a restart is a new epoch with seq from 1 again, and its control
socket answers with the real commands' checks and immediate commands."""
import time

import pytest
import zmq

from omnibroker import protocol
from omnibroker.client import Client, parse_event, subscribe_socket
from omnibridge.testing import FakeBroker, running_state


@pytest.fixture
def fake(tmp_path):
    broker = FakeBroker(f"ipc://{tmp_path}/control.sock", f"ipc://{tmp_path}/events.sock", ["a", "b"]).start()
    yield broker
    broker.close()


@pytest.fixture
def events(fake):
    """A subscriber that has seen a first event (PUB drops what it publishes before a subscription arrives)."""
    ctx = zmq.Context()
    sock = subscribe_socket(ctx, fake.events_endpoint)
    deadline = time.monotonic() + 10
    while not sock.poll(50):            # each poll is a bounded wait for the probe; no event says "subscribed"
        assert time.monotonic() < deadline, "the subscription never reached the fake broker"
        fake.publish(protocol.LOG, protocol.log_payload("a", "manager", "info", "probe"), "a")
    while sock.poll(0):
        sock.recv_multipart()
    yield sock
    sock.close(0)
    ctx.term()


@pytest.fixture
def client(fake):
    c = Client(fake.control_endpoint, timeout=5.0, retries=1, context=zmq.Context())
    yield c
    c.close()
    c.ctx.term()


def next_event(sock):
    assert sock.poll(5000), "no event within 5 s"
    return parse_event(sock.recv_multipart())


def test_events_are_stamped_by_the_event_bus(fake, events):
    before = fake.seq
    t0 = time.time()
    meta = fake.publish(protocol.LOG, protocol.log_payload("a", "go-build", "info", "hi"), "a")
    ev = next_event(events)
    assert ev.topic == protocol.LOG and ev.payload[0]["message"] == "hi"
    assert ev.meta == meta
    assert (meta.epoch, meta.seq, meta.pluginID) == (fake.epoch, before + 1, "a")
    assert t0 <= meta.ts <= time.time()
    second = fake.config("")
    assert next_event(events).meta == second and second.seq == before + 2 and second.pluginID == ""


def test_a_status_event_is_the_state_status_and_snapshot_answer(fake, events, client):
    state = running_state("a", vite_port=15180)
    meta = fake.status(state)
    ev = next_event(events)
    assert ev.topic == protocol.STATUS and ev.meta.seq == meta.seq and ev.payload["vitePort"] == 15180
    assert fake.states["a"] == state
    assert client.request("status", plugin="a").result["vitePort"] == 15180
    snap = client.request("snapshot").result
    assert (snap["epoch"], snap["seq"]) == (fake.epoch, meta.seq)
    assert snap["plugins"]["a"]["vitePort"] == 15180 and set(snap["plugins"]) == {"a", "b"}


def test_a_restart_is_a_new_epoch_with_seq_from_one(fake, events):
    old = fake.epoch
    fake.publish(protocol.LOG, protocol.log_payload("a", "manager", "info", "before"), "a")
    next_event(events)
    fake.restart()
    meta = fake.status(running_state("b"))
    ev = next_event(events)
    assert ev.meta == meta and meta.epoch != old and meta.seq == 1
    assert set(fake.states) == {"a", "b"}


def test_control_answers_with_the_real_commands(fake, client):
    ping = client.request("ping").result
    assert ping == {"epoch": fake.epoch, "version": protocol.VERSION, "configError": ""}
    fake.config("/src/omni.toml:3: expected '='")
    assert client.request("list").result["configError"] == "/src/omni.toml:3: expected '='"
    assert [s["pluginID"] for s in client.request("list").result["plugins"]] == ["a", "b"]
    fake.log_tail["a"] = [{"message": "tail"}]
    assert client.request("logs", plugin="a").result == {"entries": [{"message": "tail"}]}
    assert client.request("start", plugin="a").result == {}
    assert [r["command"] for r in fake.requests] == ["ping", "list", "list", "logs", "start"]


def test_control_refuses_what_the_broker_refuses(client):
    unknown = client.request("pong")
    assert (unknown.status, unknown.code) == ("error", protocol.ErrorCode.UNKNOWN_COMMAND)
    typo = client.request("status", plugni="a")
    assert (typo.code, typo.reason) == (protocol.ErrorCode.BAD_PROPERTY,
                                        "status: unknown properties ['plugni']; known: ['plugin']")
    assert client.request("logs", plugin="a", count="9").code == protocol.ErrorCode.BAD_PROPERTY
    assert client.request("status", plugin="zz").code == protocol.ErrorCode.UNKNOWN_PLUGIN
