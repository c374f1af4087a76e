"""omnievents wakes supervisord after each program it stops has died (supervisor_link.wake_when_gone): one request,
made only once the process is gone, over supervisord's unix socket (here a small XML-RPC server in its place)."""
import os
import socket
import subprocess
import threading
import time
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from omnibroker.supervisor_link import wake_when_gone


class UnixXMLRPCServer(SimpleXMLRPCServer):
    address_family = socket.AF_UNIX

    def __init__(self, path: str):
        super().__init__(path, requestHandler=_Handler, logRequests=False)


class _Handler(SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False         # a TCP option

    def address_string(self) -> str:        # a unix socket's peer has no host
        return "unix"


def test_supervisord_is_asked_once_the_process_is_gone(tmp_path):
    path = str(tmp_path / "supervisor.sock")
    proc = subprocess.Popen(["sleep", "60"])
    dead_when_asked: list[bool] = []
    asked = threading.Event()

    def get_state() -> dict:
        # the process is our child: dead means a zombie we have not reaped (WNOWAIT leaves it so)
        dead_when_asked.append(os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None)
        asked.set()
        return {"statename": "SHUTDOWN"}
    server = UnixXMLRPCServer(path)
    server.register_function(get_state, "supervisor.getState")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        waker = threading.Thread(target=wake_when_gone, args=(proc.pid, f"unix://{path}"), daemon=True)
        waker.start()
        assert not asked.wait(1.0)              # no request while the process lives
        proc.kill()
        assert asked.wait(10)
        waker.join(10)
        assert not waker.is_alive()
        assert dead_when_asked == [True]
    finally:
        proc.kill()
        proc.wait()
        server.shutdown()
        server.server_close()


def test_a_process_already_gone_wakes_at_once(tmp_path):
    path = str(tmp_path / "supervisor.sock")
    asked: list[float] = []
    server = UnixXMLRPCServer(path)
    server.register_function(lambda: asked.append(time.monotonic()) or {}, "supervisor.getState")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen(["true"])
    proc.wait()                                 # reaped: its pid names no process
    try:
        wake_when_gone(proc.pid, f"unix://{path}")
        assert len(asked) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_no_supervisord_is_no_error(tmp_path):
    proc = subprocess.Popen(["true"])
    proc.wait()
    wake_when_gone(proc.pid, f"unix://{tmp_path}/absent.sock")


