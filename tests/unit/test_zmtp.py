"""omnibroker.zmtp (omnictl's stdlib REQ path) against real libzmq sockets, and omnictl's choice of transport."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zmq

from omnibroker import protocol, zmtp

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def serve(sock: zmq.Socket, answer, count: int = 1) -> threading.Thread:
    """Answer `count` requests on a ROUTER (envelope kept) with answer(body) -> list of reply frames."""
    def run():
        for _ in range(count):
            if not sock.poll(10_000):
                return
            frames = sock.recv_multipart()
            sock.send_multipart(frames[:-1] + answer(frames[-1]))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("size", [0, 10, 255, 256, 70_000])
def test_round_trip_with_a_router_short_and_long_frames(ctx, tmp_path, size):
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/c.sock")
    seen = []
    t = serve(router, lambda body: (seen.append(body), [body[::-1] + b"!"])[1])
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert zmtp.request(str(tmp_path / "c.sock"), body, 5.0) == body[::-1] + b"!"
    t.join(5)
    assert seen == [body]
    router.close(0)


def test_round_trip_with_a_rep_socket(ctx, tmp_path):
    rep = ctx.socket(zmq.REP)
    rep.bind(f"ipc://{tmp_path}/r.sock")

    def run():
        assert rep.poll(10_000)
        rep.send(b"pong:" + rep.recv())
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert zmtp.request(str(tmp_path / "r.sock"), b"ping", 5.0) == b"pong:ping"
    t.join(5)
    rep.close(0)


def test_abstract_namespace_endpoint(ctx):
    name = f"omni-test-{os.getpid()}"
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://@{name}")
    t = serve(router, lambda body: [b"ok"])
    assert zmtp.ipc_path(f"ipc://@{name}") == "\0" + name
    assert zmtp.request(zmtp.ipc_path(f"ipc://@{name}"), b"hi", 5.0) == b"ok"
    t.join(5)
    router.close(0)


def test_not_ipc_is_not_ours():
    assert zmtp.ipc_path("tcp://127.0.0.1:5601") is None


def test_nobody_listening(tmp_path):
    with pytest.raises(FileNotFoundError):
        zmtp.request(str(tmp_path / "none.sock"), b"x", 1.0)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "stale.sock"))       # bound, never listening: like a socket file left by a dead broker
    with pytest.raises(ConnectionRefusedError):
        zmtp.request(str(tmp_path / "stale.sock"), b"x", 1.0)
    s.close()


def _raw_server(path: str, script) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        with conn:
            script(conn)
        srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_peer_that_is_not_zmtp(tmp_path):
    t = _raw_server(str(tmp_path / "http.sock"),
                    lambda c: (c.recv(4096), c.sendall(b"HTTP/1.1 400 Bad Request\r\n" * 4)))
    with pytest.raises(zmtp.ZmtpError, match="not a ZMTP 3"):
        zmtp.request(str(tmp_path / "http.sock"), b"x", 2.0)
    t.join(5)


def test_a_peer_that_hangs_up_or_stays_silent(tmp_path):
    t = _raw_server(str(tmp_path / "close.sock"), lambda c: (c.recv(4096), c.sendall(zmtp.GREETING[:30])))
    with pytest.raises(zmtp.ZmtpError, match="closed"):
        zmtp.request(str(tmp_path / "close.sock"), b"x", 2.0)
    t.join(5)
    done = threading.Event()
    t = _raw_server(str(tmp_path / "silent.sock"), lambda c: done.wait(10))
    with pytest.raises(TimeoutError):
        zmtp.request(str(tmp_path / "silent.sock"), b"x", 0.3)
    done.set()
    t.join(5)


def test_a_reply_of_more_frames_than_req_allows(ctx, tmp_path):
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/m.sock")
    t = serve(router, lambda body: [b"a", b"b"])
    with pytest.raises(zmtp.ZmtpError, match="frames"):
        zmtp.request(str(tmp_path / "m.sock"), b"x", 5.0)
    t.join(5)
    router.close(0)


# --- omnictl: which transport, and what it imports --------------------------------------------------------------

CTL = ("import sys\nfrom omnibroker.ctl import main\nrc = main(sys.argv[1:])\n"
       "print('MODULES', sorted(m for m in ('zmq', 'msgspec', 'asyncio', 'typing', 'socket') if m in sys.modules))\n"
       "sys.exit(rc)\n")


def run_ctl(env_endpoint: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMNI_CONTROL=env_endpoint, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", CTL, *args], env=env, capture_output=True, text=True, timeout=30)


def test_omnictl_over_ipc_imports_neither_pyzmq_nor_msgspec(ctx, tmp_path):
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/ctl.sock")
    requests = []

    def answer(body):
        req = protocol.decode_request([body])          # what omnictl built by hand is a valid Request
        requests.append(req)
        return [protocol.encode(protocol.ok_reply(req.id, {"pluginID": "p1", "goStatus": "ready"}))]
    t = serve(router, answer)
    out = run_ctl(f"ipc://{tmp_path}/ctl.sock", "--json", "status", "p1")
    t.join(5)
    assert out.returncode == 0, out.stderr
    body, modules = out.stdout.rsplit("MODULES", 1)
    assert json.loads(body) == {"pluginID": "p1", "goStatus": "ready"}
    assert modules.strip() == "[]"
    assert requests[0].command == "status" and requests[0].properties == {"plugin": "p1"}
    router.close(0)


def test_omnictl_error_reply_and_falls_back_to_pyzmq_on_a_surprise(ctx, tmp_path):
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{tmp_path}/ctl.sock")
    # 1st answer is not JSON (the stdlib path gives up without counting a try), the retry over pyzmq gets the reply
    answers = iter([[b"garbage"], None])

    def answer(body):
        a = next(answers)
        if a is None:
            req = protocol.decode_request([body])
            a = [protocol.encode(protocol.error_reply(req.id, protocol.ErrorCode.UNKNOWN_PLUGIN, "no plugin 'x'"))]
        return a
    t = serve(router, answer, count=2)
    out = run_ctl(f"ipc://{tmp_path}/ctl.sock", "status", "x")
    t.join(5)
    assert out.returncode == 1 and "unknown_plugin: no plugin 'x'" in out.stderr, out
    assert "'msgspec'" in out.stdout and "'zmq'" in out.stdout        # it did take the pyzmq path
    router.close(0)


def test_omnictl_nobody_listening_exit_3(tmp_path):
    out = run_ctl(f"ipc://{tmp_path}/nobody.sock", "--timeout", "0.2", "ping")
    assert out.returncode == 3 and "nobody.sock" in out.stderr, out
