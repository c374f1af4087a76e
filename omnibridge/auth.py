"""The bridge's security checks: the per-start token, the Origin allowlist, the Host guard (DNS rebinding).

Model (omnibridge/README.md "Security"): the bridge listens on loopback only. A WebSocket upgrade must carry
`?token=<t>` equal to the random token of this start (also in `<runtime>/bridge.token`, mode 0600) and, when it has
an `Origin` header (every browser sends one), that origin must be in the allowlist. Every request, plain HTTP or
upgrade, must name the bridge itself in `Host` (127.0.0.1:<port> or localhost:<port>), so a DNS-rebinding page on
`http://evil.example:<port>` gets 403 even though its requests reach our socket.
"""
from __future__ import annotations

import hmac
import os
import secrets

from omnibroker.files import write_atomic

TOKEN_FILE = "bridge.token"
PORT_FILE = "bridge.port"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600."""
    write_atomic(path, text)


def token_matches(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


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
