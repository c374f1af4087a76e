"""One REQ round trip over an `ipc://` endpoint, speaking ZMTP 3.0 (NULL mechanism) with the stdlib only.

Why: a one-shot `omnictl status` spends most of its time importing pyzmq and msgspec and starting and stopping a
ZeroMQ context (two I/O threads), not talking to the broker. A unix socket, a 64-byte greeting, one READY command each
way and two frames cost well under a millisecond. omnictl uses this for ipc endpoints; TCP (always CURVE), `tail` and
everything long-lived keep pyzmq (omnibroker.client). Any surprise here raises ZmtpError and omnictl falls back to
pyzmq, so this path can only make a call faster, never different.

Wire format (rfc.zeromq.org/spec/23): greeting = 0xFF, 8 padding bytes, 0x7F, version 3.0, mechanism "NULL" padded to
20 bytes, as-server 0, 31 zero bytes. Then each side sends a READY command carrying its Socket-Type. A REQ message is
an empty delimiter frame (flag MORE) then the body; the reply comes back the same way.
"""
from __future__ import annotations

import struct

# The C module, not `socket`: importing `socket` costs ~8 ms (selectors, an IntEnum built from every constant), a fifth
# of a whole omnictl call.
import _socket as socket

GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x00" + b"\0" * 31
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


class ZmtpError(Exception):
    """The peer did not speak ZMTP 3 the way a ROUTER/REP socket does (or the socket failed)."""


def _frame(flags: int, body: bytes) -> bytes:
    if len(body) > 255:
        return struct.pack(">BQ", flags | _LONG, len(body)) + body
    return struct.pack(">BB", flags, len(body)) + body


def _ready(socket_type: bytes) -> bytes:
    prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return _frame(_COMMAND, b"\x05READY" + prop)


class _Reader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ZmtpError("the peer closed the connection")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def frame(self) -> tuple[int, bytes]:
        flags = self.exactly(1)[0]
        size = struct.unpack(">Q", self.exactly(8))[0] if flags & _LONG else self.exactly(1)[0]
        return flags, self.exactly(size)


def ipc_path(endpoint: str) -> str | None:
    """The unix socket path of an `ipc://` endpoint (`@name` is Linux's abstract namespace); None for others."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    return "\0" + path[1:] if path.startswith("@") else path


def request(path: str, body: bytes, timeout: float) -> bytes:
    """Send `body` as a REQ to the ROUTER/REP socket bound at unix socket `path`; return the reply body.

    Raises ZmtpError (protocol surprise), ConnectionError/FileNotFoundError (nobody listening) or TimeoutError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(GREETING + _ready(b"REQ"))
        reader = _Reader(sock)
        greeting = reader.exactly(64)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3 or greeting[12:16] != b"NULL":
            raise ZmtpError(f"not a ZMTP 3 NULL-mechanism peer (greeting {greeting[:16]!r})")
        flags, command = reader.frame()
        if not flags & _COMMAND or not command.startswith(b"\x05READY"):
            raise ZmtpError(f"expected READY, got {command[:16]!r}")
        sock.sendall(_frame(_MORE, b"") + _frame(0, body))
        parts: list[bytes] = []
        while True:
            flags, data = reader.frame()
            if flags & _COMMAND:        # e.g. a ZMTP 3.1 PING: not ours to answer in a one-shot call
                continue
            parts.append(data)
            if not flags & _MORE:
                break
        if len(parts) != 2 or parts[0]:
            raise ZmtpError(f"expected [delimiter, reply], got {len(parts)} frames")
        return parts[1]
    finally:
        sock.close()


def listening(path: str) -> bool:
    """Whether something accepts connections on unix socket `path` (a connect, closed at once)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()
