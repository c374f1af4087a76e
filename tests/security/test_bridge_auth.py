"""Issue 13 item 1: who may use the bridge. The real service (supervisord, broker, bridge), probed as its own user and
as a second local user (`runuser -u nobody`, as root).

- another user gets 403 on every HTTP path and every WebSocket, even with the right token, and never the token;
- the same user without the token or the cookie gets, for the dashboard page, 403 and a page saying how to get the
  URL, never the token (the static files and /stats carry no secret and are served to that user as they are);
- `GET /?token=…` trades the token for an HttpOnly, SameSite=Strict cookie named after the port and redirects to the
  same path without it; the cookie opens the dashboard and, with an allowed Origin, the WebSocket;
- a WebSocket without Origin (not a browser) must present the token: the cookie alone is refused.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import stat
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

PATHS = ["/", "/index.html", "/dashboard.js", "/omni-client.js", "/dashboard.css", "/stats", "/ws", "/bridge.token",
         "/../bridge.token", "/nope"]


@pytest.fixture(scope="module")
def bridge(shared_service):
    """(service, port, token), from the dashboard URL the bridge writes to <runtime>/bridge.url."""
    svc = shared_service
    svc.bridge_address(30)
    url = urlsplit((svc.runtime / "bridge.url").read_text().strip())
    return svc, url.port, parse_qs(url.query)["token"][0]


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        for k, v in {"Host": f"127.0.0.1:{port}", **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def exchange(port: int, token: str) -> str:
    """`GET /?token=…` as a browser would: the Cookie header to send from then on."""
    status, headers, body = get(port, f"/?token={token}")
    assert status == 303, (status, body)
    assert headers["location"] == "/"
    assert token not in headers["set-cookie"]
    return headers["set-cookie"].split(";")[0]


async def ws_status(port: int, query: str = "", **headers: str) -> int:
    """101 when the handshake is accepted (and the snapshot arrives), else the HTTP status of the refusal."""
    origin = headers.pop("origin", None)
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws{query}", open_timeout=10, origin=origin,
                           additional_headers=headers) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "snapshot"
            return 101
    except InvalidStatus as e:
        return e.response.status_code


# --- a second local user --------------------------------------------------------------------------------------------
# Runs as nobody with the system python3 (stdlib only: nobody cannot run our venv). It is given the token, as if it
# had leaked, and reports every status and whether any response carried the token.
PROBE = r"""
import http.client, json, socket, sys
port, token, paths = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
out = {}
def req(path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    for k, v in {"Host": f"127.0.0.1:{port}", **headers}.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    raw = resp.read() + str(resp.getheaders()).encode()
    conn.close()
    return [resp.status, token.encode() in raw]
ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version": "13"}
for path in paths:
    out[path] = req(path, {})
    out[path + " +token"] = req(path + ("&" if "?" in path else "?") + "token=" + token, {})
    out[path + " +bearer"] = req(path, {"Authorization": "Bearer " + token})
out["ws +token"] = req("/ws?token=" + token, ws)
out["ws +token +origin"] = req("/ws?token=" + token, {**ws, "Origin": f"http://127.0.0.1:{port}"})
print(json.dumps(out))
"""


def as_nobody(port: int, token: str) -> dict:
    if os.getuid() != 0:
        pytest.skip("needs root to run a probe as a second user (runuser -u nobody)")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not python:
        pytest.skip("no /usr/bin/python3 for the second user")
    proc = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", PROBE, str(port), token, json.dumps(PATHS)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_another_user_gets_403_everywhere_and_never_the_token(bridge):
    svc, port, token = bridge
    seen = as_nobody(port, token)
    assert seen and all(status == 403 and not leaked for status, leaked in seen.values()), seen
    deadline = time.monotonic() + 10        # supervisord copies the bridge's stderr into the log a little later
    while "its socket belongs to uid 65534" not in svc.logs("omnibridge.log", 400):
        assert time.monotonic() < deadline, svc.logs("omnibridge.log")
        time.sleep(0.05)


def test_another_users_websocket_is_refused_even_with_the_token(bridge):
    _, port, token = bridge
    seen = as_nobody(port, token)
    assert seen["ws +token"] == [403, False] and seen["ws +token +origin"] == [403, False], seen
    assert asyncio.run(ws_status(port, f"?token={token}")) == 101       # the control: the same request, our user


# --- the same user ------------------------------------------------------------------------------------------------------
def test_without_token_or_cookie_the_page_is_403_and_says_how_to_get_the_url(bridge):
    svc, port, token = bridge
    for path in ("/", "/index.html", "/?token=wrong", "/?token=", f"/?token={token[:-1]}"):
        status, headers, body = get(port, path)
        assert status == 403 and headers["content-type"].startswith("text/html"), (path, status)
        assert b"omnictl dashboard" in body and str(svc.runtime / "bridge.url").encode() in body
        assert token.encode() not in body and token not in str(headers), path
    # what carries no secret is served to the bridge's own user as it is: never the token
    for path in ("/dashboard.js", "/omni-client.js", "/dashboard.css", "/stats"):
        status, headers, body = get(port, path)
        assert status == 200 and token.encode() not in body and token not in str(headers), path
    for path in ("/bridge.token", "/../bridge.token", "/bridge.url", "/nope"):
        assert get(port, path)[0] == 404, path
    assert get(port, "/ws")[0] == 426


def test_token_is_exchanged_for_a_strict_httponly_cookie_and_dropped_from_the_url(bridge):
    _, port, token = bridge
    status, headers, _ = get(port, f"/?token={token}")
    assert status == 303 and headers["location"] == "/"
    cookie = [p.strip() for p in headers["set-cookie"].split(";")]
    name, value = cookie[0].split("=", 1)
    assert name == f"omni-session-{port}" and value and value != token
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(cookie), cookie
    assert not any(p.lower().startswith(("domain", "expires", "max-age")) for p in cookie), cookie


def test_the_cookie_opens_the_dashboard_and_no_page_contains_the_token(bridge):
    _, port, token = bridge
    cookie = {"Cookie": exchange(port, token)}
    for path in ("/", "/index.html", "/dashboard.js", "/omni-client.js", "/dashboard.css", "/stats"):
        status, headers, body = get(port, path, cookie)
        assert status == 200, path
        assert token.encode() not in body and token not in str(headers), path
    assert get(port, "/", {"Cookie": f"omni-session-{port}=not-the-session"})[0] == 403
    assert get(port, "/", {"Cookie": cookie["Cookie"].replace(f"-{port}=", "-1=")})[0] == 403   # another bridge's


def test_websocket_with_the_cookie_and_an_allowed_origin_connects(bridge):
    _, port, token = bridge
    cookie = exchange(port, token)
    assert asyncio.run(ws_status(port, origin=f"http://127.0.0.1:{port}", Cookie=cookie)) == 101
    assert asyncio.run(ws_status(port, origin=f"http://localhost:{port}", Cookie=cookie)) == 101
    assert asyncio.run(ws_status(port, origin="http://evil.example", Cookie=cookie)) == 403


def test_websocket_without_origin_needs_the_token_itself(bridge):
    svc, port, token = bridge
    cookie = exchange(port, token)
    assert asyncio.run(ws_status(port, Cookie=cookie)) == 403
    assert asyncio.run(ws_status(port)) == 403
    assert asyncio.run(ws_status(port, f"?token={token}")) == 101
    assert asyncio.run(ws_status(port, Authorization=f"Bearer {token}")) == 101


def test_dashboard_url_file_is_private(bridge):
    svc, port, token = bridge
    path = svc.runtime / "bridge.url"
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    assert path.read_text() == f"http://127.0.0.1:{port}/?token={token}\n"
    st = os.stat(svc.runtime / "bridge.session")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()


def test_a_wrong_token_is_refused_even_with_the_cookie(bridge):
    """An old URL (a previous start's token) gets the help page, not a half-working dashboard."""
    _, port, token = bridge
    cookie = exchange(port, token)
    status, _, body = get(port, "/?token=from-an-old-start", {"Cookie": cookie})
    assert status == 403 and b"omnictl dashboard" in body
    assert asyncio.run(ws_status(port, "?token=wrong", origin=f"http://127.0.0.1:{port}", Cookie=cookie)) == 403
