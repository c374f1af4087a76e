"""omnibridge: the browser's way into omni (protocol.md, "Frontend bridge"; omnibridge/README.md).

One asyncio loop, one `websockets` server on 127.0.0.1:
- `GET /?token=…`     the token exchange: 303 to the same path without the token, with the session cookie
- `GET /`             the dashboard (index.html; no secret in it), or, without the cookie or the token, 403 and a
                      short page saying how to get the dashboard's URL (`omnictl dashboard`, <runtime>/bridge.url)
- `GET /<file>`       the dashboard's static files (omnibridge/static/), Cache-Control: no-store
- `GET /stats`        the hub's counters (JSON)
- `GET /ws`           WebSocket: {"type":"snapshot",…} then {"type":"event",…}; browser → {"type":"request",…} →
                      {"type":"reply",…}; {"type":"resync"} → a fresh snapshot. `&batch=1`: the server may put
                      several messages in one frame as a JSON array (omni-client.js asks for it)
Every request comes from a socket of the bridge's own uid and names the bridge in `Host` (auth.py); anything else gets
HTTP 403. The dashboard page and the WebSocket also need the session cookie or the token (a WebSocket: an allowed
Origin when it has one, the token itself when it has none). The static files and /stats carry no secret (the page
itself carries none either: it is the WebSocket that acts), so they are served to the bridge's own user without
them: `/stats` is the liveness probe of scripts and tests, which should not need the secret to ask "are you up?".

Environment: OMNI_BRIDGE_PORT (default 15170; 0 = any free port), OMNI_BRIDGE_ORIGINS (extra allowed origins, comma
separated), plus the usual OMNI_RUNTIME_DIR / OMNI_CONTROL / OMNI_EVENTS. Once the socket is bound the bridge writes,
each 0600 and atomically, <runtime>/bridge.token, bridge.port and bridge.url (the dashboard's URL with the token,
written last); a clean stop removes them. <runtime>/bridge.session (the cookie's value) outlives restarts.
"""
from __future__ import annotations

import asyncio
import email.utils
import html
import itertools
import json
import logging
import os
import signal
import sys
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from omnibroker import protocol

from . import auth
from .hub import Hub

log = logging.getLogger("omnibridge")

DEFAULT_PORT = 15170
HOST = "127.0.0.1"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_MESSAGE = 1 << 20           # from a browser
MAX_IN_FLIGHT = 64              # control requests per browser awaiting their reply
BATCH_MAX = 500                 # messages per WebSocket frame with ?batch=1
BATCH_BYTES = 512 * 1024        # (stop adding messages to a batch past this size)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}

# The dashboard imports plugin UIs from their Vite servers (any loopback port) and Vite's HMR client connects back
# to them over WebSocket; nothing else is allowed, and no one may frame the page.
LOOPBACK_ANY = "http://127.0.0.1:* http://localhost:*"
CSP = "; ".join([
    "default-src 'self'",
    f"script-src 'self' {LOOPBACK_ANY}",
    f"style-src 'self' 'unsafe-inline' {LOOPBACK_ANY}",
    f"img-src 'self' data: {LOOPBACK_ANY}",
    f"font-src 'self' data: {LOOPBACK_ANY}",
    f"connect-src 'self' {LOOPBACK_ANY} ws://127.0.0.1:* ws://localhost:*",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "object-src 'none'",
])


HELP_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HELP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>omni dev dashboard: open it with its URL</title></head>
<body style="font: 15px/1.5 system-ui, sans-serif; max-width: 42em; margin: 3em auto">
<h1>omni dev dashboard</h1>
<p>This address needs the dashboard's own URL, which carries a secret token. As the user who runs omni, get it with</p>
<pre>omnictl dashboard</pre>
<p>or read <code>{url_file}</code> (<code>make run</code> prints it too), and open that URL here. The browser then keeps
a cookie for this dashboard, so this page is only seen again when that cookie is lost.</p>
</body></html>
"""


class Bridge:
    def __init__(self, hub: Hub, token: str, port: int = 0, extra_origins: str | None = None, *,
                 session: str | None = None, runtime: str = ""):
        self.hub = hub
        self.token = token
        self.session = session or auth.new_token()      # the cookie's value (auth.session_secret)
        self.runtime = runtime
        self.uid = os.getuid()
        self.extra_origins = extra_origins
        self.set_port(port)
        self._ids = itertools.count(1)

    def set_port(self, port: int) -> None:
        self.port = port
        self.origins = auth.allowed_origins(port, self.extra_origins)
        self.hosts = auth.allowed_hosts(port)

    # --- HTTP --------------------------------------------------------------------------------------------------
    def _response(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
        st = HTTPStatus(status)
        headers = Headers([
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("X-Frame-Options", "DENY"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
        ])
        for k, v in (extra or {}).items():
            headers[k] = v
        return Response(st.value, st.phrase, headers, body)

    def _text(self, status: int, text: str) -> Response:
        return self._response(status, text.encode(), "text/plain; charset=utf-8")

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Every request, HTTP or WebSocket upgrade, passes here first (auth.py's model); None accepts an upgrade."""
        url = urlsplit(request.path)
        uid = auth.peer_uid(conn.remote_address, conn.local_address)
        if uid != self.uid:
            log.warning("refused %s from %s: its socket belongs to uid %s, not to this bridge's uid %d", url.path,
                        conn.remote_address, "unknown" if uid is None else uid, self.uid)
            return self._text(403, "Forbidden: this bridge serves only the user who runs it\n")
        host = request.headers.get("Host", "")
        if host not in self.hosts:
            log.warning("refused %s: Host %r is not the bridge (%s)", url.path, host, ", ".join(sorted(self.hosts)))
            return self._text(403, "Forbidden: unexpected Host header\n")
        in_url = (parse_qs(url.query).get("token") or [None])[0]
        token = in_url or auth.bearer(request.headers.get("Authorization"))
        has_token = auth.token_matches(token, self.token)
        # a token presented must be the right one, cookie or not (an old URL says so instead of half-working)
        has_cookie = token is None and auth.token_matches(auth.cookie_value(request.headers.get("Cookie"), self.port),
                                                          self.session)
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if url.path == "/ws":
            if not upgrade:
                return self._text(426, "Upgrade Required: this is the omni WebSocket\n")
            origin = request.headers.get("Origin")
            if origin is not None and origin not in self.origins:
                log.warning("refused WebSocket from origin %r (allowed: %s)", origin, ", ".join(sorted(self.origins)))
                return self._text(403, "Forbidden: origin not allowed\n")
            if has_token or (has_cookie and origin is not None):
                return None                     # accept the handshake
            if has_cookie:
                log.warning("refused WebSocket without Origin presenting only the cookie")
                return self._text(403, "Forbidden: a client that is not a browser must present the token\n")
            log.warning("refused WebSocket with %s token (origin %r)", "a wrong" if token else "no", origin)
            return self._text(403, "Forbidden: bad or missing token\n")
        if upgrade:
            return self._text(404, "Not Found: the WebSocket is at /ws\n")
        if url.path in ("/", "/index.html"):
            if in_url is not None and has_token:
                # the token exchange: a cookie for this bridge, and the address bar without the token
                return self._response(303, b"", "text/plain; charset=utf-8", {
                    "Location": url.path, "Set-Cookie": auth.session_cookie(self.port, self.session)})
            if not (has_token or has_cookie):
                if token is not None:
                    log.warning("refused %s with a wrong token", url.path)
                return self._response(403, self._help_page(), "text/html; charset=utf-8",
                                      {"Content-Security-Policy": HELP_CSP})
        return self.serve_http(url.path)     # static files and /stats: no secret in them (see the module's doc)

    def _help_page(self) -> bytes:
        """What a request without the token or the cookie gets: how to obtain the dashboard's URL, never the token."""
        url_file = os.path.join(self.runtime, auth.URL_FILE) if self.runtime else f"<runtime>/{auth.URL_FILE}"
        return HELP_PAGE.format(url_file=html.escape(url_file)).encode()

    def serve_http(self, path: str) -> Response:
        if path == "/stats":
            return self._response(200, json.dumps(self.hub.stats()).encode(), "application/json")
        name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
        if not name or "/" in name or name.startswith(".") or "\\" in name:
            return self._text(404, "Not Found\n")
        full = os.path.join(STATIC_DIR, name)
        ext = os.path.splitext(name)[1].lower()
        if ext not in CONTENT_TYPES or not os.path.isfile(full):
            return self._text(404, "Not Found\n")
        with open(full, "rb") as f:
            body = f.read()
        extra = {"Content-Security-Policy": CSP} if name == "index.html" else {}
        return self._response(200, body, CONTENT_TYPES[ext], extra)

    # --- WebSocket ---------------------------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        name = f"#{next(self._ids)} {ws.request.headers.get('Origin', '(no origin)')}"
        if not self.hub.synced:
            try:    # a browser that connects while the bridge starts gets the broker's state, not an empty one
                await asyncio.wait_for(self.hub.synced_event.wait(), 2.0)
            except asyncio.TimeoutError:
                pass
        peer = await self.hub.add_peer(name)
        log.info("browser %s connected (%d connected)", name, len(self.hub.peers))
        batch = (parse_qs(urlsplit(ws.request.path).query).get("batch") or ["0"])[0] == "1"
        sender = asyncio.create_task(self._send_loop(ws, peer, batch))
        in_flight: set[asyncio.Task] = set()
        try:
            async for message in ws:
                await self._on_message(ws, peer, message, in_flight)
        except ConnectionClosed:
            pass
        finally:
            self.hub.remove_peer(peer)
            sender.cancel()
            for t in in_flight:
                t.cancel()
            log.info("browser %s left (%d connected)", name, len(self.hub.peers))

    async def _send_loop(self, ws: ServerConnection, peer, batch: bool) -> None:
        """Send the browser's queue in order. With `?batch=1` the messages queued while the previous send was
        draining go out together as one JSON array (one WebSocket frame): under load a browser then handles one
        message event per batch instead of one per event; when idle nothing waits (no added latency)."""
        try:
            while True:
                text = await peer.next()
                n = 1
                if batch and peer.queue:
                    parts, size = [text], len(text)
                    while peer.queue and len(parts) < BATCH_MAX and size < BATCH_BYTES:
                        nxt = peer.queue.popleft()
                        parts.append(nxt)
                        size += len(nxt)
                    n = len(parts)
                    text = "[" + ",".join(parts) + "]"
                await ws.send(text)
                peer.sent += n
        except ConnectionClosed:
            pass

    async def _on_message(self, ws: ServerConnection, peer, message: Any, in_flight: set) -> None:
        try:
            doc = msgspec.json.decode(message)
        except msgspec.DecodeError:
            await self._send(ws, {"type": "reply", "id": None, "status": "error", "code": "bad_request",
                                  "reason": "a message must be JSON"})
            return
        if not isinstance(doc, dict):
            doc = {}
        kind = doc.get("type")
        if kind == "resync":
            peer.push_now(self.hub.snapshot_text())
            return
        if kind == "ping":
            await self._send(ws, {"type": "pong", "id": doc.get("id")})
            return
        rid = doc.get("id")
        if kind != "request":
            await self._send(ws, {"type": "reply", "id": rid, "status": "error", "code": "bad_request",
                                  "reason": "expected {\"type\": \"request\" | \"resync\" | \"ping\", ...}"})
            return
        command, props = doc.get("command"), doc.get("properties", {})
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or not isinstance(command, str) \
                or not isinstance(props, dict):
            await self._send(ws, {"type": "reply", "id": rid if isinstance(rid, (str, int)) else None,
                                  "status": "error", "code": "bad_request",
                                  "reason": "a request is {type: 'request', id: str|int, command: str, "
                                            "properties: object}"})
            return
        if len(in_flight) >= MAX_IN_FLIGHT:
            await self._send(ws, {"type": "reply", "id": rid, "status": "error", "code": "busy",
                                  "reason": f"more than {MAX_IN_FLIGHT} requests in flight"})
            return
        task = asyncio.create_task(self._forward(ws, rid, command, props))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    async def _forward(self, ws: ServerConnection, rid: Any, command: str, props: dict) -> None:
        reply = await self.hub.request(command, props, timeout=_timeout_for(command, props))
        doc = protocol.to_builtins(reply)
        doc["id"] = rid
        doc["type"] = "reply"
        await self._send(ws, doc)

    async def _send(self, ws: ServerConnection, doc: dict) -> None:
        try:
            await ws.send(json.dumps(doc, separators=(",", ":")))
        except ConnectionClosed:
            pass


def dashboard_url(port: int, token: str) -> str:
    return f"http://{HOST}:{port}/?token={token}"


def _timeout_for(command: str, props: dict) -> float:
    """How long to wait for the broker: the command's own timeout (forwarded ones wait for a worker) plus margin."""
    try:
        from omnibroker.commands import COMMANDS
        cmd = COMMANDS.get(command)
    except Exception:       # noqa: BLE001
        cmd = None
    base = (cmd.timeout + 5.0) if cmd is not None and cmd.forward else 10.0
    t = props.get("timeout")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0:
        base = max(base, float(t) + 5.0)
    return min(base, 300.0)


async def run(port: int, runtime: str) -> None:
    token = auth.new_token()
    hub = Hub()
    bridge = Bridge(hub, token, port, session=auth.session_secret(os.path.join(runtime, auth.SESSION_FILE)),
                    runtime=runtime)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        server = await serve(bridge.handler, HOST, port, process_request=bridge.process_request,
                             compression=None, max_size=MAX_MESSAGE, server_header="omnibridge",
                             ping_interval=20, ping_timeout=20)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s (set OMNI_BRIDGE_PORT)", HOST, port, e)
        raise SystemExit(1) from None
    actual = server.sockets[0].getsockname()[1]
    bridge.set_port(actual)
    files = {os.path.join(runtime, auth.TOKEN_FILE): token + "\n",
             os.path.join(runtime, auth.PORT_FILE): f"{actual}\n",
             os.path.join(runtime, auth.URL_FILE): dashboard_url(actual, token) + "\n"}
    for path, text in files.items():        # the URL last: `make run` waits for it
        auth.write_private(path, text)
    log.info("omnibridge on http://%s:%d/ (its URL with the token in %s; allowed origins: %s)", HOST, actual,
             os.path.join(runtime, auth.URL_FILE), ", ".join(sorted(bridge.origins)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hub_task = asyncio.create_task(hub.run())
    stop_task = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({hub_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if hub_task in done:
            hub_task.result()       # re-raise what killed the hub: supervisord restarts us
    finally:
        hub_task.cancel()
        stop_task.cancel()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 3)
        except asyncio.TimeoutError:
            pass
        for path, mine in files.items():
            try:
                with open(path) as f:
                    if f.read() == mine:        # another bridge may have started since: leave its files
                        os.unlink(path)
            except OSError:
                pass
        hub.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from omnibroker.process import set_pdeathsig
    set_pdeathsig(signal.SIGTERM)       # die with supervisord, even when it is SIGKILLed
    raw = os.environ.get("OMNI_BRIDGE_PORT", str(DEFAULT_PORT))
    try:
        port = int(raw)
        if not 0 <= port < 65536:
            raise ValueError
    except ValueError:
        log.error("OMNI_BRIDGE_PORT=%r is not a port number", raw)
        return 2
    runtime = protocol.ensure_runtime_dir()
    try:
        asyncio.run(run(port, runtime))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
