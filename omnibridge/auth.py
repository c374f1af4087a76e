"""The bridge's security checks: the peer's uid, the per-start token, the session cookie, Origin and Host.

Model (omnibridge/README.md "Security"). The bridge listens on loopback TCP, which every local user can reach, so:
- Every request, HTTP or WebSocket, comes from a socket owned by the bridge's own uid, read from /proc/net/tcp(6)
  (`peer_uid`, as delve's `--only-same-user`); a peer of another user, or one whose owner cannot be found, gets 403
  whatever it presents.
- The token (random per start, in `<runtime>/bridge.token` and in the dashboard URL `<runtime>/bridge.url`, both 0600)
  is exchanged once by `GET /?token=…` for an HttpOnly, SameSite=Strict cookie named after the port (two bridges on
  one host do not clobber each other's cookie). Its value is the session secret in `<runtime>/bridge.session` (0600),
  kept across the bridge's restarts so an open dashboard reconnects by itself; it is never the token, and the token
  is never put in a response.
- Every request must name the bridge itself in `Host` (127.0.0.1:<port> or localhost:<port>), so a DNS-rebinding
  page on `http://evil.example:<port>` gets 403 even though its requests reach our socket.
- A WebSocket with an `Origin` (every browser sends one) needs an allowed origin and the cookie or the token; one
  without an `Origin` is not a browser and must present the token itself (`?token=` or `Authorization: Bearer`).
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import struct
import sys
from http.cookies import CookieError, SimpleCookie

from omnibroker.files import write_atomic

TOKEN_FILE = "bridge.token"
PORT_FILE = "bridge.port"
URL_FILE = "bridge.url"
SESSION_FILE = "bridge.session"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
PROC_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600."""
    write_atomic(path, text)


def session_secret(path: str) -> str:
    """The cookie value: the one in `path` (0600, ours) when there is a valid one, else a new one written there."""
    try:
        st = os.stat(path)
        if st.st_uid == os.getuid() and st.st_mode & 0o077 == 0:
            with open(path) as f:
                value = f.read().strip()
            if len(value) >= 40 and value.replace("-", "").replace("_", "").isalnum():
                return value
    except OSError:
        pass
    value = new_token()
    write_private(path, value + "\n")
    return value


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def cookie_name(port: int) -> str:
    return f"omni-session-{port}"


def session_cookie(port: int, value: str) -> str:
    """The Set-Cookie value: host-only (no Domain), whole site, not readable by scripts, never sent cross-site."""
    return f"{cookie_name(port)}={value}; Path=/; HttpOnly; SameSite=Strict"


def cookie_value(header: str | None, port: int) -> str | None:
    if not header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(cookie_name(port))
    return morsel.value if morsel is not None else None


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def own_origins(port: int) -> set[str]:
    return {f"http://{name}:{port}" for name in LOOPBACK_NAMES}


def allowed_origins(port: int, extra: str | None = None) -> set[str]:
    """The bridge's own origins, plus `OMNI_BRIDGE_ORIGINS` (comma list of exact origins, e.g. http://localhost:5173)."""
    origins = own_origins(port)
    for item in (extra if extra is not None else os.environ.get("OMNI_BRIDGE_ORIGINS", "")).split(","):
        item = item.strip().rstrip("/")
        if item:
            origins.add(item)
    return origins


def allowed_hosts(port: int) -> set[str]:
    return {f"{name}:{port}" for name in LOOPBACK_NAMES}


# --- who is on the other end -------------------------------------------------------------------------------------------
_LITTLE = sys.byteorder == "little"


def _hex_v4(addr: str) -> str:
    """/proc/net/tcp's spelling of an IPv4 address: the 4 bytes in host (little-endian on x86/arm) order."""
    packed = socket.inet_aton(addr)
    return (packed[::-1] if _LITTLE else packed).hex().upper()


def _hex_v6(addr: str) -> str:
    """/proc/net/tcp6's spelling: four 32-bit words, each in host order."""
    packed = ipaddress.IPv6Address(addr).packed
    words = [packed[i:i + 4] for i in range(0, 16, 4)]
    return "".join((w[::-1] if _LITTLE else w).hex().upper() for w in words)



def _keys(peer: tuple, local: tuple) -> list[tuple[str, bytes]]:
    """(table, "PEERADDR:PORT LOCALADDR:PORT") for each way the kernel may list the client's socket: the client's row
    has the client's address as its local address and ours as its remote one."""
    (paddr, pport), (laddr, lport) = peer[:2], local[:2]
    keys = []
    pip, lip = ipaddress.ip_address(paddr), ipaddress.ip_address(laddr)
    if pip.version == 4 and lip.version == 4:
        keys.append((PROC_TABLES[0], f"{_hex_v4(paddr)}:{pport:04X} {_hex_v4(laddr)}:{lport:04X}".encode()))
        # a dual-stack client socket connected to an IPv4 address is listed in tcp6 with mapped addresses
        keys.append((PROC_TABLES[1], f"{_hex_v6('::ffff:' + paddr)}:{pport:04X} "
                                     f"{_hex_v6('::ffff:' + laddr)}:{lport:04X}".encode()))
    else:
        keys.append((PROC_TABLES[1], f"{_hex_v6(paddr)}:{pport:04X} {_hex_v6(laddr)}:{lport:04X}".encode()))
    return keys


def peer_uid(peer: tuple | None, local: tuple | None) -> int | None:
    """The uid owning the client end of the loopback TCP connection peer -> local; None when it cannot be found (not
    a TCP peer, the client already closed, neither source available). Asked of the kernel's socket table by exact
    lookup (sock_diag netlink, what `ss` uses: ~20 µs), else read from /proc/net/tcp and tcp6 (several ms on a
    machine with a large TCP hash table: the kernel walks every bucket for each read)."""
    if not peer or not local:
        return None
    try:
        uid = diag_uid(peer, local)
    except OSError:         # no sock_diag (kernel option, seccomp): the /proc tables answer the same question
        uid = proc_uid(peer, local)
    return uid


# sock_diag (linux/sock_diag.h, linux/inet_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG_HDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBxI")             # family, protocol, ext, pad, states
_DIAG_ID_TAIL = struct.Struct("=III")           # interface, cookie[2]
_DIAG_UID_AT = _NLMSG_HDR.size + 4 + 48 + 12    # inet_diag_msg: 4 bytes, id (48), expires, rqueue, wqueue, uid


def diag_uid(peer: tuple, local: tuple) -> int | None:
    """The uid of the socket whose source is `peer` and destination `local` (the client's socket), by one sock_diag
    exact lookup. Raises OSError when sock_diag is not available; None when no such socket exists."""
    try:
        ip = ipaddress.ip_address(peer[0])
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        src = socket.inet_pton(family, peer[0]).ljust(16, b"\0")
        dst = socket.inet_pton(family, local[0]).ljust(16, b"\0")
    except (ValueError, OSError):
        return None
    req = (_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + struct.pack(">HH", peer[1], local[1])
           + src + dst + _DIAG_ID_TAIL.pack(0, 0xFFFFFFFF, 0xFFFFFFFF))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as s:
        s.settimeout(1.0)
        s.send(_NLMSG_HDR.pack(_NLMSG_HDR.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req)
        data = s.recv(8192)
    if len(data) < _NLMSG_HDR.size:
        return None
    kind = _NLMSG_HDR.unpack_from(data)[1]
    if kind == _NLMSG_ERROR:
        errno = -struct.unpack_from("=i", data, _NLMSG_HDR.size)[0]
        if errno in (2, 22):        # ENOENT: no such socket (any more); EINVAL: not a lookup the kernel can make
            return None
        raise OSError(errno, f"sock_diag: {os.strerror(errno)}")
    if kind != _SOCK_DIAG_BY_FAMILY or len(data) < _DIAG_UID_AT + 4:
        return None
    return struct.unpack_from("=I", data, _DIAG_UID_AT)[0]


def proc_uid(peer: tuple, local: tuple) -> int | None:
    """The same answer from /proc/net/tcp and tcp6. The tables are searched as bytes for the one row naming both
    ends (the client's row has the client's address as its local address and ours as its remote one)."""
    try:
        keys = _keys(peer, local)
    except ValueError:
        return None
    for table, key in keys:
        try:
            with open(table, "rb") as f:
                data = f.read()
        except OSError:
            continue
        at = data.find(b": " + key + b" ")
        if at < 0:
            continue
        end = data.find(b"\n", at)
        fields = data[at + 2:end if end >= 0 else len(data)].split()
        # local rem st tx:rx tr:when retrnsmt uid ...
        try:
            return int(fields[6])
        except (IndexError, ValueError):
            return None
    return None
