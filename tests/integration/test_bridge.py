"""omnibridge without a browser: real supervisord (tests/support/service.py), a `websockets` client, plain HTTP.

The bridge runs as supervisord's `omnibridge` program with OMNI_BRIDGE_PORT=0; it writes the port it bound to
<runtime>/bridge.port and its token to <runtime>/bridge.token.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from support.waits import run

from omnibridge import hub as hubmod


# --- helpers ----------------------------------------------------------------------------------------------------
def bridge_files(svc, timeout: float = 20.0, not_token: str | None = None) -> tuple[int, str]:
    """(port, token) once the bridge has written both files (a new token when `not_token` is given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            port = int((svc.runtime / "bridge.port").read_text())
            token = (svc.runtime / "bridge.token").read_text().strip()
            if token and token != not_token and _answers(port, token):
                return port, token
        except (OSError, ValueError):
            pass
        time.sleep(0.05)        # polling two files written once by another process: nothing to wait on
    raise AssertionError(f"bridge files not written within {timeout}s\n{svc.logs('omnibridge.log')}")


def _answers(port: int, token: str) -> bool:
    """The bridge answers and has its first snapshot from the broker."""
    try:
        status, _, body = http_get(port, "/stats", token=token)
        return status == 200 and json.loads(body)["brokerConnected"]
    except OSError:
        return False


def http_get(port: int, path: str, host: str | None = None, token: str | None = None) -> tuple[int, dict, bytes]:
    """GET as a script would: with the token, when given, in an Authorization header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def ws_url(port: int, token: str | None) -> str:
    return f"ws://127.0.0.1:{port}/ws" + (f"?token={token}" if token is not None else "")


async def refused_status(url: str, **kw) -> int | None:
    try:
        async with connect(url, open_timeout=5, **kw):
            return None
    except InvalidStatus as e:
        return e.response.status_code


async def recv_json(ws, timeout: float = 10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


_seen: dict[int, list] = {}       # id(ws) -> every message read from it, in order
_unread: dict[int, list] = {}     # id(ws) -> messages read while waiting for something else


async def recv_until(ws, pred, timeout: float = 20.0, what: str = "message") -> dict:
    """The first message matching pred; messages skipped on the way stay available to later waits."""
    unread = _unread.setdefault(id(ws), [])
    for i, msg in enumerate(unread):
        if pred(msg):
            del unread[i]
            return msg
    deadline = time.monotonic() + timeout
    seen = _seen.setdefault(id(ws), [])
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {timeout}s; last: {seen[-5:]}")
        try:
            msg = await recv_json(ws, left)
        except asyncio.TimeoutError:
            continue
        seen.append(msg)
        if pred(msg):
            return msg
        unread.append(msg)


async def ask(ws, command: str, rid: str = "r1", **props) -> dict:
    await ws.send(json.dumps({"type": "request", "id": rid, "command": command, "properties": props}))
    return await recv_until(ws, lambda m: m.get("type") == "reply" and m.get("id") == rid, what=f"reply {rid}")


@pytest.fixture(scope="module")
def bridge(shared_service):
    port, token = bridge_files(shared_service)
    return shared_service, port, token


# --- files and HTTP ---------------------------------------------------------------------------------------------
def test_token_and_port_files_are_private(bridge):
    svc, port, token = bridge
    for name in ("bridge.token", "bridge.port"):
        st = os.stat(svc.runtime / name)
        assert stat.S_IMODE(st.st_mode) == 0o600, name
        assert st.st_uid == os.getuid()
    assert len(token) >= 40
    assert not [p for p in svc.runtime.iterdir() if p.name.startswith("bridge.token.tmp")]


@pytest.mark.parametrize("path, ctype", [
    ("/", "text/html"), ("/index.html", "text/html"), ("/dashboard.js", "text/javascript"),
    ("/omni-client.js", "text/javascript"), ("/dashboard.css", "text/css"), ("/stats", "application/json"),
])
def test_static_files_content_type_and_no_store(bridge, path, ctype):
    _, port, token = bridge
    status, headers, body = http_get(port, path, token=token)
    assert status == 200
    assert headers["content-type"].startswith(ctype)
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert token.encode() not in body
    if ctype == "text/html":
        assert "frame-ancestors 'none'" in headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/../server.py", "/%2e%2e/server.py", "/static/../auth.py", "/nope.js",
                                  "/.hidden", "/__init__.py"])
def test_no_file_outside_static(bridge, path):
    _, port, token = bridge
    status, _, body = http_get(port, path, token=token)
    assert status == 404, body


@pytest.mark.parametrize("host", ["evil.example:{port}", "127.0.0.1.nip.io:{port}", "127.0.0.1:1", "localhost"])
def test_foreign_host_header_is_refused(bridge, host):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the token."""
    _, port, token = bridge
    status, _, body = http_get(port, "/", host=host.format(port=port), token=token)
    assert status == 403
    assert token.encode() not in body


def test_localhost_host_is_served(bridge):
    _, port, token = bridge
    assert http_get(port, "/", host=f"localhost:{port}", token=token)[0] == 200


# --- WebSocket auth ---------------------------------------------------------------------------------------------
def test_wrong_or_missing_token_is_403(bridge):
    _, port, token = bridge

    async def go():
        assert await refused_status(ws_url(port, "wrong")) == 403
        assert await refused_status(ws_url(port, None)) == 403
        assert await refused_status(ws_url(port, "")) == 403
        assert await refused_status(ws_url(port, token[:-1])) == 403
        assert await refused_status(ws_url(port, "wrong"), origin=f"http://127.0.0.1:{port}") == 403
    run(go())


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:1", "null", "https://127.0.0.1:{port}",
                                    "http://127.0.0.1:{port}.evil.example"])
def test_foreign_origin_is_403_even_with_the_token(bridge, origin):
    _, port, token = bridge

    async def go():
        return await refused_status(ws_url(port, token), origin=origin.format(port=port))
    assert run(go()) == 403


@pytest.mark.parametrize("origin", ["http://127.0.0.1:{port}", "http://localhost:{port}", None])
def test_own_origin_or_no_origin_with_token_connects(bridge, origin):
    _, port, token = bridge

    async def go():
        kw = {"origin": origin.format(port=port)} if origin else {}
        async with connect(ws_url(port, token), open_timeout=5, **kw) as ws:
            return await recv_json(ws)
    assert run(go())["type"] == "snapshot"


def test_upgrade_with_foreign_host_is_403(bridge):
    _, port, token = bridge
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest("GET", f"/ws?token={token}", skip_host=True)
        for k, v in (("Host", f"evil.example:{port}"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")):
            conn.putheader(k, v)
        conn.endheaders()
        assert conn.getresponse().status == 403
    finally:
        conn.close()


# --- snapshot, events, requests ---------------------------------------------------------------------------------
def test_snapshot_on_connect_matches_the_broker(bridge):
    svc, port, token = bridge
    broker = svc.call("snapshot")

    async def go():
        async with connect(ws_url(port, token), open_timeout=5) as ws:
            return await recv_json(ws)
    snap = run(go())
    assert snap["type"] == "snapshot"
    assert snap["epoch"] == broker["epoch"]
    assert snap["seq"] >= broker["seq"]
    assert set(snap["plugins"]) >= set(broker["plugins"])
    assert snap["broker"] == {"connected": True}
    assert isinstance(snap["logs"], dict) and isinstance(snap["errors"], dict)


def test_request_reply(bridge):
    svc, port, token = bridge

    async def go():
        async with connect(ws_url(port, token), open_timeout=5) as ws:
            await recv_json(ws)
            ping = await ask(ws, "ping", rid="p-1")
            unknown = await ask(ws, "frobnicate", rid=7)
            bad = await ask(ws, "status", rid="s", plugin="ghost")
            await ws.send("not json")
            junk = await recv_until(ws, lambda m: m.get("type") == "reply" and m.get("id") is None)
            await ws.send(json.dumps({"type": "request", "id": "x", "command": 5}))
            badreq = await recv_until(ws, lambda m: m.get("type") == "reply" and m.get("id") == "x")
            return ping, unknown, bad, junk, badreq
    ping, unknown, bad, junk, badreq = run(go())
    assert ping["status"] == "ok" and ping["result"]["epoch"] == svc.call("ping")["epoch"]
    assert isinstance(ping["time"], float)
    assert unknown["id"] == 7 and unknown["status"] == "error" and unknown["code"] == "unknown_command"
    assert bad["code"] == "unknown_plugin" and bad["reason"]
    assert junk["code"] == "bad_request"
    assert badreq["code"] == "bad_request"


def test_events_flow_in_seq_order_and_remove_is_seen(service, tmp_path):
    svc = service
    port, token = bridge_files(svc)
    plugin_dir = tmp_path / "p"
    plugin_dir.mkdir()

    async def go():
        async with connect(ws_url(port, token), open_timeout=5) as ws:
            snap = await recv_until(ws, lambda m: m["type"] == "snapshot" and m["epoch"], what="snapshot")
            added = await ask(ws, "add", rid="a", plugin="evt", path=str(plugin_dir))
            assert added["status"] == "ok", added
            def up(m):
                return (m.get("type") == "event" and m["topic"] == "plugin/devserver/status"
                        and m["payload"]["pluginID"] == "evt" and m["payload"]["workerStatus"] == "up")
            ev = await recv_until(ws, up, what="evt worker up")
            assert ev["meta"]["pluginID"] == "evt" and ev["meta"]["epoch"] == snap["epoch"]
            seqs = [m["meta"]["seq"] for m in _seen[id(ws)] if m.get("type") == "event"]
            assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 1 + len(seqs))), seqs
            # a late joiner sees the plugin in its snapshot
            async with connect(ws_url(port, token), open_timeout=5) as ws2:
                snap2 = await recv_json(ws2)
                assert snap2["plugins"]["evt"]["workerStatus"] == "up"
                assert snap2["seq"] >= ev["meta"]["seq"]
            removed = await ask(ws, "remove", rid="r", plugin="evt")
            assert removed["status"] == "ok", removed
            # no event says "removed": the bridge notices in its check and sends a snapshot without it
            await recv_until(ws, lambda m: m.get("type") == "snapshot" and "evt" not in m["plugins"],
                             timeout=15, what="snapshot without evt")
    run(go())


def test_bridge_survives_broker_restart(service):
    svc = service
    port, token = bridge_files(svc)
    bridge_pid = svc.wait_program("omnibridge")

    async def go():
        async with connect(ws_url(port, token), open_timeout=5) as ws:
            snap = await recv_json(ws)
            broker = svc.program_pid("omnibroker")
            os.kill(broker, signal.SIGKILL)
            # (supervisord restarts it at once: the bridge may or may not see it down; it must see the new epoch)
            new = await recv_until(ws, lambda m: m.get("type") == "snapshot" and m["epoch"] != snap["epoch"],
                                   timeout=30, what="snapshot of the new epoch")
            assert new["broker"]["connected"] is True
            ping = await ask(ws, "ping", rid="after")
            assert ping["status"] == "ok" and ping["result"]["epoch"] == new["epoch"]
    run(go())
    assert svc.program_pid("omnibridge") == bridge_pid     # the bridge itself did not restart


def test_new_token_at_each_start(service):
    svc = service
    port, token = bridge_files(svc)
    pid = svc.wait_program("omnibridge")
    svc.supervisor().stopProcess("omnibridge")
    assert not (svc.runtime / "bridge.token").exists()      # removed on a clean stop
    svc.supervisor().startProcess("omnibridge")
    svc.wait_program("omnibridge", not_pid=pid)
    port2, token2 = bridge_files(svc, not_token=token)
    assert token2 != token

    async def go():
        assert await refused_status(ws_url(port2, token)) == 403      # the old token is dead
        async with connect(ws_url(port2, token2), open_timeout=5) as ws:
            return await recv_json(ws)
    assert run(go())["type"] == "snapshot"


# --- fan-out without a broker: the hub's per-browser queues ---------------------------------------------------------
def test_slow_browser_gets_a_fresh_snapshot_instead_of_blocking():
    async def go():
        hub = hubmod.Hub(queue_size=5)
        try:
            hub.epoch, hub.seq, hub.plugins, hub.synced = "e1", 10, {"a": {"pluginID": "a"}}, True
            hub.following_logs = True       # no broker here to fetch log tails from
            slow, fast = await hub.add_peer("slow"), await hub.add_peer("fast")
            assert json.loads(await fast.next())["type"] == "snapshot"
            for i in range(11, 20):
                hub.seq = i
                hub._changed()
                hub.broadcast(json.dumps({"type": "event", "meta": {"seq": i}}))
                if fast.queue:
                    while fast.queue:           # the fast browser keeps up
                        await fast.next()
            assert fast.overflows == 0
            assert slow.overflows >= 1
            msgs = [json.loads(m) for m in slow.queue]
            snaps = [m for m in msgs if m["type"] == "snapshot"]
            assert snaps, msgs
            last_snap = max(i for i, m in enumerate(msgs) if m["type"] == "snapshot")
            after = [m["meta"]["seq"] for m in msgs[last_snap + 1:]]
            assert after == list(range(msgs[last_snap]["seq"] + 1, 20)), msgs
            assert len(slow.queue) <= 5
        finally:
            hub.close()
    run(go())


def test_a_stalled_browser_does_not_slow_the_others():
    """Real omnibridge in front of a stand-in broker: one client stops reading, the other must get every event
    in order; the stalled one, when it reads again, finds a fresh snapshot followed by consecutive events."""
    from omnibroker import protocol
    from omnibridge.testing import BridgeProcess

    n = 6_000
    filler = "x" * 8000          # ~8 KB events: the stalled client's socket buffers fill after ~1,500 of them

    def publish(bp):
        for i in range(n):
            bp.fake.publish(protocol.LOG, protocol.log_payload("a", "go-build", "info", f"{i} {filler}"), "a")
            if i % 100 == 99:
                time.sleep(0.05)        # pacing the load (~2,000 events/s, a busy but real rate), not a sync

    async def go(bp):
        url = ws_url(bp.port, bp.token)
        async with connect(url, open_timeout=5, max_queue=1, max_size=None) as slow, \
                connect(url, open_timeout=5, max_size=None) as fast:
            assert (await recv_json(slow))["type"] == "snapshot"
            snap = await recv_json(fast)
            assert snap["type"] == "snapshot"
            loop = asyncio.get_running_loop()
            pub = loop.run_in_executor(None, publish, bp)
            seqs = []
            t0 = time.monotonic()
            while len(seqs) < n:
                msg = await recv_json(fast, 30)
                assert msg["type"] == "event", msg["type"]      # the fast client never needed a snapshot
                seqs.append(msg["meta"]["seq"])
            fast_s = time.monotonic() - t0
            await pub
            assert seqs == list(range(snap["seq"] + 1, snap["seq"] + 1 + n))
            # now read the stalled one: somewhere a snapshot replaced what it could not take
            kinds, after = [], None
            while True:
                msg = await recv_json(slow, 30)
                kinds.append(msg["type"])
                if msg["type"] == "snapshot":
                    after = msg["seq"]
                    got = []
                elif after is not None:
                    got.append(msg["meta"]["seq"])
                if msg["type"] == "event" and msg["meta"]["seq"] == snap["seq"] + n:
                    break
            assert "snapshot" in kinds and after is not None
            assert got == list(range(after + 1, snap["seq"] + n + 1))
            return fast_s

    with BridgeProcess(plugins=["a"]) as bp:
        try:
            fast_s = run(go(bp))
        except BaseException:
            print(bp.logs())
            raise
        stats = json.loads(http_get(bp.port, "/stats", token=bp.token)[2])
    assert stats["overflows"] >= 1 and stats["gaps"] == 0
    print(f"fast client: {n} events in {fast_s:.2f}s while the other was stalled; overflows {stats['overflows']}")


def test_log_lines_are_followed_only_while_a_browser_is_connected():
    """An idle bridge gets no log events at all (the broker filters them); the first browser gets each plugin's log
    tail in its snapshot, then every event in seq order; when it leaves, log events stop again."""
    from omnibroker import protocol
    from omnibridge.testing import BridgeProcess, running_state

    def stats(bp) -> dict:
        return json.loads(http_get(bp.port, "/stats", token=bp.token)[2])

    def wait_stats(bp, pred, what: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = stats(bp)
            if pred(st):
                return st
            time.sleep(0.02)        # polling the bridge's counters over HTTP: no event to wait on
        raise AssertionError(f"{what} within {timeout}s: {stats(bp)}\n{bp.logs()}")

    def idle_round(bp) -> None:
        """100 log events then one status: the status is seen, the log events are not."""
        before = wait_stats(bp, lambda st: st["seq"] == bp.fake.seq, "bridge caught up")
        for i in range(100):
            bp.fake.publish(protocol.LOG, protocol.log_payload("a", "plugin", "info", f"idle {i}"), "a")
        meta = bp.fake.status(running_state("a"))
        after = wait_stats(bp, lambda st: st["seq"] == meta.seq, "status after the log burst")
        assert after["events"] == before["events"] + 1 and after["gaps"] == 0 and after["resyncs"] == before["resyncs"]

    async def with_browser(bp) -> None:
        tail = [{"timestamp": protocol.now_rfc3339(), "source": "plugin", "level": "info", "message": f"old {i}",
                 "pluginID": "a"} for i in range(3)]
        bp.fake.log_tail["a"] = tail
        async with connect(ws_url(bp.port, bp.token), open_timeout=5) as ws:
            snap = await recv_json(ws)
            assert snap["type"] == "snapshot" and snap["logs"]["a"] == tail
            # the subscription reaches the broker asynchronously: publish until one log line comes through
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "no log event reached the browser"
                bp.fake.publish(protocol.LOG, protocol.log_payload("a", "plugin", "info", "probe"), "a")
                try:
                    msg = await recv_json(ws, 0.2)
                except asyncio.TimeoutError:
                    continue
                if msg["type"] == "event" and msg["topic"] == protocol.LOG:
                    break
            start = msg["meta"]["seq"]
            for i in range(50):
                bp.fake.publish(protocol.LOG, protocol.log_payload("a", "plugin", "info", f"live {i}"), "a")
            got = [await recv_until(ws, lambda m: m.get("type") == "event" and m["meta"]["seq"] == start + k,
                                    timeout=10, what=f"event {start + k}") for k in range(1, 51)]
            assert [m["payload"][0]["message"] for m in got] == [f"live {i}" for i in range(50)]
        wait_stats(bp, lambda st: st["browsers"] == 0, "browser gone")

    with BridgeProcess(plugins=["a"]) as bp:
        try:
            wait_stats(bp, lambda st: st["brokerConnected"], "bridge synced")
            idle_round(bp)
            run(with_browser(bp))
            idle_round(bp)
        except BaseException:
            print(bp.logs())
            raise


def test_a_browser_arriving_while_the_broker_does_not_answer_gets_the_log_tails_once_it_does():
    from omnibroker import protocol
    from omnibridge.testing import BridgeProcess

    tail = [{"timestamp": protocol.now_rfc3339(), "source": "go-build", "level": "error", "message": "pkg/x.go:1:1: boom",
             "pluginID": "a"}]

    async def go(bp):
        async with connect(ws_url(bp.port, bp.token), open_timeout=5) as ws:
            await recv_until(ws, lambda m: m.get("type") == "broker" and not m["connected"]
                             or m.get("type") == "snapshot" and not m["broker"]["connected"],
                             timeout=20, what="the bridge noticing the broker is gone")
            bp.fake.answering.set()
            snap = await recv_until(ws, lambda m: m.get("type") == "snapshot" and m["logs"].get("a"),
                                    timeout=20, what="a snapshot with the log tail")
            assert snap["logs"]["a"] == tail and snap["broker"]["connected"]

    with BridgeProcess(plugins=["a"]) as bp:
        bp.fake.log_tail["a"] = tail
        bp.fake.answering.clear()
        try:
            run(go(bp))
        except BaseException:
            print(bp.logs())
            raise


# --- omni.toml's problems (the broker's `configError`, topic omni/config) ------------------------------------------------
def test_config_error_is_in_the_snapshot_and_its_events_are_forwarded():
    from omnibridge.testing import BridgeProcess

    async def go(bp):
        async with connect(ws_url(bp.port, bp.token), open_timeout=5) as ws:
            snap = await recv_json(ws)
            assert snap["type"] == "snapshot" and snap["configError"] == "/src/omni.toml:3: expected '='", snap
            meta = bp.fake.config("")           # fixed
            ev = await recv_until(ws, lambda m: m.get("type") == "event" and m["topic"] == "omni/config",
                                  what="the omni/config event")
            assert ev["payload"] == {"path": "/src/omni.toml", "error": ""} and ev["meta"]["seq"] == meta.seq
            assert ev["meta"]["pluginID"] == ""
            bp.fake.config("/src/omni.toml:7: unknown key 'bogus'")
            await recv_until(ws, lambda m: m.get("type") == "event" and m["topic"] == "omni/config"
                             and m["payload"]["error"], what="the second omni/config event")
        async with connect(ws_url(bp.port, bp.token), open_timeout=5) as ws:     # a late browser starts from it
            snap = await recv_json(ws)
            assert snap["configError"] == "/src/omni.toml:7: unknown key 'bogus'"

    with BridgeProcess(plugins=["a"]) as bp:
        bp.fake.config("/src/omni.toml:3: expected '='")    # the bridge takes it from an event or its first snapshot
        try:
            run(go(bp))
        except BaseException:
            print(bp.logs())
            raise


# --- omnictl dashboard ---------------------------------------------------------------------------------------------------
def _omnictl_dashboard(runtime) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "omnictl"
    return subprocess.run([str(exe), "dashboard"], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, OMNI_RUNTIME_DIR=str(runtime)))


def test_omnictl_dashboard_prints_the_url_or_says_the_bridge_is_not_up():
    from omnibridge.testing import BridgeProcess

    with BridgeProcess(plugins=["a"]) as bp:
        out = _omnictl_dashboard(bp.runtime)
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"http://127.0.0.1:{bp.port}/?token={bp.token}\n"
        runtime = Path(bp.runtime)
        bp._stop_proc()
        assert not (runtime / "bridge.url").exists()              # a clean stop removes it
        out = _omnictl_dashboard(runtime)
        assert out.returncode == 3 and "the bridge is not up" in out.stderr and "make run" in out.stderr, out
        (runtime / "bridge.url").write_text(f"http://127.0.0.1:{bp.port}/?token=stale\n")    # as after kill -9
        out = _omnictl_dashboard(runtime)
        assert out.returncode == 3 and f"names port {bp.port}, which does not answer" in out.stderr, out
        assert out.stdout == ""
