"""omnievents: a supervisord event listener forwarding our programs' PROCESS_STATE_* events, and supervisord's
SUPERVISOR_STATE_CHANGE_STOPPING (the start of its shutdown: the broker then tells every worker to stop its parts at
once), to the broker. When supervisord begins to stop one of our programs, a thread waits for its death and then
wakes supervisord (supervisor_link.wake_when_gone).

supervisord's listener protocol (supervisord docs, "Events"): write READY, read a header line with `len:`, read that
many bytes of payload, act, answer `RESULT 2\\nOK`. We forward on a DEALER to the broker's worker socket without
blocking: when the broker is down, ZeroMQ queues (bounded) and delivers on reconnect.
"""
from __future__ import annotations

import os
import sys
import threading

import zmq

from . import protocol
from .security import secure_client
from .supervisor_link import wake_when_gone

OURS = ("omniworker-", "omnibroker", "omnibridge")


def parse_tokens(line: str) -> dict[str, str]:
    return dict(tok.split(":", 1) for tok in line.split() if ":" in tok)


def send(sock: zmq.Socket, kind: bytes, msg: object) -> None:
    """Queue `msg` for the broker without blocking (dropped when the queue is full: the broker is long gone)."""
    try:
        sock.send_multipart([kind, protocol.encode(msg)], flags=zmq.NOBLOCK)
    except zmq.Again:
        pass


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    url = os.environ.get("SUPERVISOR_SERVER_URL", "")      # supervisord sets it for its programs
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.IMMEDIATE, 0)
    secure_client(sock, protocol.endpoint("workers"))
    sock.connect(protocol.endpoint("workers"))
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        header_line = stdin.readline()
        if not header_line:
            return 0        # supervisord went away
        header = parse_tokens(header_line.decode("utf-8", "replace"))
        payload = stdin.read(int(header.get("len", "0")))
        event = header.get("eventname", "")
        if event == "SUPERVISOR_STATE_CHANGE_STOPPING":
            send(sock, protocol.K_SUPERVISOR, protocol.SupervisorState(state="STOPPING"))
        elif event.startswith("PROCESS_STATE_"):
            first_line = payload.split(b"\n", 1)[0].decode("utf-8", "replace")
            fields = parse_tokens(first_line)
            name = fields.get("processname", "")
            if name.startswith(OURS):
                if event == "PROCESS_STATE_STOPPING" and fields.get("pid", "0") != "0" and url:
                    threading.Thread(target=wake_when_gone, args=(int(fields["pid"]), url), daemon=True).start()
                send(sock, protocol.K_PROCSTATE, protocol.ProcState(
                    name=name, state=event[len("PROCESS_STATE_"):], pid=int(fields.get("pid", 0) or 0),
                    expected=fields.get("expected", "1") == "1"))
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
