"""A request over MAX_REQUEST_BYTES never reaches the broker's Python code: the control socket's ZMQ_MAXMSGSIZE makes
libzmq drop it and disconnect the peer as soon as it reads the frame's size, so it costs the broker nothing (it
briefly cost 233 MB for 100 MB before). A request of exactly MAX_REQUEST_BYTES is read and answered.
"""
from __future__ import annotations

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from support.memory import peak_mb, reset_peak, rss_mb
from support.service import Service

from omnibroker import protocol


@pytest.fixture(scope="module")
def svc():
    with Service() as s:
        yield s


def padded_ping(size: int) -> bytes:
    """A ping request of exactly `size` bytes (an unknown property carries the padding)."""
    head, tail = b'{"id": "big", "command": "ping", "properties": {"pad": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_a_request_of_the_limit_is_answered(svc):
    reply = svc.raw(padded_ping(protocol.MAX_REQUEST_BYTES))
    assert reply["status"] == "error" and reply["code"] == "bad_property" and reply["id"] == "big", reply


@pytest.mark.parametrize("size", [protocol.MAX_REQUEST_BYTES + 1, 100 << 20])
def test_an_oversized_request_disconnects_its_sender_and_costs_nothing(svc, size):
    pid = svc.program_pid("omnibroker")
    base = rss_mb(pid)
    reset_peak(pid)
    sock = svc.ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    sock.connect(svc.endpoint("control"))
    try:
        assert monitor.poll(5000) and recv_monitor_message(monitor)["event"] == zmq.EVENT_CONNECTED
        sock.send_multipart([b"", padded_ping(size)])
        assert monitor.poll(10_000), "the broker did not disconnect a peer that sent an oversized request"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not sock.poll(200), "an oversized request was answered"
        peak = peak_mb(pid)
        print(f"request of {size} bytes: broker RSS {base:.1f} MB, peak {peak:.1f} MB")
        assert peak < base + 10, (base, peak)
        assert svc.call("ping")["epoch"]        # and everybody else is served
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
