"""The broker's ipc sockets are created 0600 (README: "ipc files 0600"), and the owner can still connect."""
from __future__ import annotations

import os
import stat

import zmq

from omnibroker.events import bind


def test_ipc_socket_file_is_0600_and_usable(tmp_path):
    path = tmp_path / "control.sock"
    path.write_text("stale")            # a killed broker's leftover is replaced
    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.ROUTER)
        server.setsockopt(zmq.LINGER, 0)
        old = os.umask(0o022)           # whatever the caller's umask, the file gets 0600
        try:
            bind(server, f"ipc://{path}")
        finally:
            os.umask(old)
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        client = ctx.socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.connect(f"ipc://{path}")
        client.send(b"hello")
        assert server.poll(5000)
        assert server.recv_multipart()[-1] == b"hello"
    finally:
        ctx.destroy(linger=0)
