"""Issue 13 item 1: the bridge finds the uid owning the client end of each loopback TCP connection (auth.peer_uid:
sock_diag, else /proc/net/tcp and tcp6) and refuses a connection when that uid is not its own or cannot be found.
Real sockets, real second user (`runuser -u nobody`, as root); the per-connect cost is measured with and without
the check in the same run."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Request

from omnibridge import auth
from omnibridge.hub import Hub
from omnibridge.server import Bridge


@contextmanager
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(20)
    try:
        yield srv
    finally:
        srv.close()


def nobody_connects(port: int) -> subprocess.Popen:
    """A client socket owned by nobody, held open until its stdin closes."""
    if os.getuid() != 0:
        pytest.skip("needs root to open a socket as a second user (runuser -u nobody)")
    code = f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port})); sys.stdin.read()"
    return subprocess.Popen(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code], stdin=subprocess.PIPE)


@pytest.mark.parametrize("lookup", [auth.peer_uid, auth.diag_uid, auth.proc_uid])
def test_owner_of_the_client_socket_is_found(lookup):
    with listener() as srv:
        mine = socket.create_connection(srv.getsockname())
        conn, peer = srv.accept()
        assert lookup(peer, conn.getsockname()) == os.getuid()
        theirs = nobody_connects(srv.getsockname()[1])
        try:
            conn2, peer2 = srv.accept()
            assert lookup(peer2, conn2.getsockname()) == 65534
            conn2.close()
        finally:
            theirs.stdin.close()
            theirs.wait(10)
        # dual-stack client: an AF_INET6 socket connected to the IPv4 address (listed with mapped addresses)
        six = socket.socket(socket.AF_INET6)
        six.connect(("::ffff:127.0.0.1", srv.getsockname()[1]))
        conn3, peer3 = srv.accept()
        assert lookup(peer3, conn3.getsockname()) == os.getuid()
        for s in (mine, conn, six, conn3):
            s.close()


@pytest.mark.parametrize("lookup", [auth.peer_uid, auth.diag_uid, auth.proc_uid])
def test_no_such_connection_has_no_owner(lookup):
    with listener() as srv:
        assert lookup(("127.0.0.1", 1), srv.getsockname()) is None
    assert auth.peer_uid(None, None) is None


class _Conn:
    def __init__(self, remote, local):
        self.remote_address, self.local_address = remote, local


def test_a_connection_whose_owner_is_unknown_is_refused_even_with_the_token():
    hub = Hub()
    try:
        bridge = Bridge(hub, "t" * 43, 4242)
        req = Request(f"/?token={'t' * 43}", Headers({"Host": "127.0.0.1:4242"}))
        resp = bridge.process_request(_Conn(("127.0.0.1", 1), ("127.0.0.1", 4242)), req)
        assert resp.status_code == 403 and b"only the user who runs it" in resp.body
    finally:
        hub.close()


async def _connects(port: int, token: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        async with connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=10, close_timeout=5):
            pass
    return (time.perf_counter() - t0) / n


def test_cost_of_the_check_per_websocket_connect(monkeypatch, capsys):
    """N WebSocket handshakes (open + close) on an in-process bridge, with the real check and with it replaced by
    a constant, interleaved in the same run. The handler is a no-op: only the handshake path is measured."""
    n, rounds = 100, 3
    token = auth.new_token()
    hub = Hub()
    bridge = Bridge(hub, token, 0)
    real = auth.peer_uid

    async def noop(ws):
        await ws.wait_closed()

    async def run() -> tuple[float, float]:
        async with serve(noop, "127.0.0.1", 0, process_request=bridge.process_request, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            bridge.set_port(port)
            with_check, without = [], []
            for _ in range(rounds):
                monkeypatch.setattr(auth, "peer_uid", real)
                with_check.append(await _connects(port, token, n))
                monkeypatch.setattr(auth, "peer_uid", lambda peer, local: os.getuid())
                without.append(await _connects(port, token, n))
            return min(with_check), min(without)

    try:
        with_check, without = asyncio.run(run())
    finally:
        hub.close()
    t0 = time.perf_counter()
    with listener() as srv:
        c = socket.create_connection(srv.getsockname())
        conn, peer = srv.accept()
        for _ in range(200):
            assert real(peer, conn.getsockname()) == os.getuid()
        lookup = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        for _ in range(20):
            auth.proc_uid(peer, conn.getsockname())
        proc = (time.perf_counter() - t0) / 20
        c.close()
        conn.close()
    with capsys.disabled():
        print(f"\nper WebSocket connect (best of {rounds} x {n}): {with_check * 1e3:.3f} ms with the peer-uid check, "
              f"{without * 1e3:.3f} ms without; one lookup: sock_diag {lookup * 1e6:.0f} µs, "
              f"/proc/net/tcp(6) {proc * 1e6:.0f} µs")
    assert with_check - without < 0.002, (with_check, without)     # generous: 2 shared cores
