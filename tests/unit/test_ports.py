"""PortAllocator: one port per plugin, the same one again, foreign listeners skipped, exhaustion -> no_port."""
from __future__ import annotations

import json
import socket
from contextlib import closing, contextmanager

import pytest

from omnibroker import protocol
from omnibroker.ports import PortAllocator, _try_bind, port_is_free


def _free_block(n: int) -> int:
    """A start port such that start..start+n-1 are strictly free now (no TIME_WAIT either), away from 15173."""
    for start in range(41000, 60000, 37):
        if all(_try_bind("127.0.0.1", p, reuse=False) for p in range(start, start + n)):
            return start
    pytest.skip("no free block of ports")


@contextmanager
def listener(port: int, host: str = "127.0.0.1", reuse: bool = True, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    with closing(s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1 if reuse else 0)
        s.bind((host, port))
        s.listen(1)
        yield s


def test_one_port_per_plugin_and_idempotent():
    start = _free_block(4)
    alloc = PortAllocator(start, start + 4, {})
    a = alloc.allocate("a")
    b = alloc.allocate("b")
    assert a != b
    assert {a, b} <= set(range(start, start + 4))
    assert alloc.allocate("a") == a          # holding it: same answer, no new port
    assert alloc.port_of("b") == b
    assert alloc.assigned == {"a": a, "b": b}


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_foreign_listener_is_skipped(reuse, host):
    start = _free_block(3)
    with listener(start, host=host, reuse=reuse):
        assert not port_is_free(start)
        alloc = PortAllocator(start, start + 3, {})
        assert alloc.allocate("a") == start + 1


def test_foreign_ipv6_dualstack_listener_is_skipped():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    start = _free_block(2)
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with closing(s):
        try:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", start))
            s.listen(1)
        except OSError:
            pytest.skip("cannot listen dual-stack on [::]")
        assert PortAllocator(start, start + 2, {}).allocate("a") == start + 1


def test_range_of_two_with_three_plugins_third_gets_no_port():
    start = _free_block(2)
    alloc = PortAllocator(start, start + 2, {})
    assert {alloc.allocate("a"), alloc.allocate("b")} == {start, start + 1}
    with pytest.raises(protocol.CommandError) as exc:
        alloc.allocate("c")
    assert exc.value.code == protocol.ErrorCode.NO_PORT == "no_port"
    assert f"{start}-{start + 1}" in exc.value.reason
    # releasing one lets the third in
    alloc.release("a")
    assert alloc.allocate("c") in (start, start + 1)


def test_exhaustion_by_foreign_listeners_names_the_range():
    start = _free_block(2)
    with listener(start), listener(start + 1):
        with pytest.raises(protocol.CommandError) as exc:
            PortAllocator(start, start + 2, {}).allocate("a")
    assert exc.value.code == "no_port"
    assert f"{start}-{start + 1}" in exc.value.reason


def test_same_port_again_after_release_even_when_others_came_and_went():
    start = _free_block(4)
    alloc = PortAllocator(start, start + 4, {})
    b = alloc.allocate("b")
    a = alloc.allocate("a")
    alloc.release("b")
    alloc.release("a")
    # a new plugin does not take the stopped plugins' ports while another one is free
    c = alloc.allocate("c")
    assert c not in (a, b)
    assert alloc.allocate("a") == a
    assert alloc.allocate("b") == b


def test_same_port_again_from_persisted_state():
    start = _free_block(4)
    state: dict = {}
    alloc = PortAllocator(start, start + 4, state)
    alloc.allocate("x")
    y = alloc.allocate("y")
    # the broker writes the state out and reads it back after a restart
    restored = json.loads(json.dumps(state))
    alloc2 = PortAllocator(start, start + 4, restored)
    assert alloc2.allocate("y") == y


def test_preferred_port_held_by_foreign_program_gives_another():
    start = _free_block(3)
    state: dict = {}
    alloc = PortAllocator(start, start + 3, state)
    a = alloc.allocate("a")
    alloc.release("a")
    with listener(a):
        a2 = alloc.allocate("a")
        assert a2 != a
    alloc.release("a")
    assert alloc.allocate("a") == a2         # its last port now


def test_port_freed_by_closed_connections_in_time_wait_is_reused():
    """A server that closed accepted connections leaves TIME_WAIT on its port; the plugin still gets it back."""
    start = _free_block(2)
    alloc = PortAllocator(start, start + 2, {})
    p = alloc.allocate("a")
    alloc.release("a")
    with listener(p) as srv:
        c = socket.create_connection(("127.0.0.1", p))
        conn, _ = srv.accept()
        conn.close()                          # the server side closes first -> TIME_WAIT on 127.0.0.1:p
        c.close()
    assert alloc.allocate("a") == p


def test_claim_release_forget():
    start = _free_block(3)
    alloc = PortAllocator(start, start + 3, {})
    assert alloc.claim("a", start + 2)
    assert not alloc.claim("b", start + 2)    # someone else's
    assert not alloc.claim("b", start + 3)    # out of range
    assert alloc.allocate("a") == start + 2
    assert alloc.release("a") == start + 2
    assert alloc.release("a") is None
    alloc.forget("a")
    assert "a" not in alloc.preferred


def test_invalid_state_entries_are_dropped_and_bad_range_refused():
    alloc = PortAllocator(41000, 41002, {"preferred": {"a": "nope", "b": 41001, "c": True}})
    assert alloc.preferred == {"b": 41001}
    with pytest.raises(ValueError):
        PortAllocator(10, 10, {})


def test_replace_moves_off_a_port_taken_since_allocation_and_state_shows_it():
    start = _free_block(3)
    state: dict = {}
    alloc = PortAllocator(start, start + 3, state)
    a = alloc.allocate("a")
    assert state["held"] == {"a": a}
    with listener(a):                       # another program took it after the allocation
        b = alloc.replace("a", a)
        assert b != a and alloc.port_of("a") == b
        assert state["held"] == {"a": b} and state["preferred"]["a"] == b
        assert json.loads(json.dumps(state))["held"] == {"a": b}     # persisted as plain JSON
    # even when the squatter is gone by the time it is asked, the port reported taken is not handed out again
    c = alloc.replace("a", b)
    assert c != b
    alloc.release("a")
    assert state["held"] == {}
