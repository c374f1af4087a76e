"""The bridge's one subscription to the broker, shared by every browser (fan-out happens here).

Clone pattern (ZeroMQ guide; omnibroker/client.py): subscribe, `snapshot`, apply events with seq > snapshot.seq; a
new epoch (the broker restarted) or a gap in seq (events lost at a high-water mark) → snapshot again and broadcast it
to every browser, which then starts over from it.

Besides the broker's snapshot (epoch, seq, plugins) the hub keeps, per plugin, the last LOG_LINES log entries and the
current build errors, so a browser that connects late gets the build-output panel and the error overlay in its
snapshot instead of an empty page.

Log lines (the bulk of all events) are followed only while a browser is connected: an idle bridge then costs the
broker and the machine nothing per log line. The other topics are always followed, so plugin states and build errors
are current when a browser arrives; the first browser makes the hub subscribe to log lines and fetch each plugin's log
tail with `logs` (de-duplicated against the log events that race that fetch), the last one to leave unsubscribes.
While log lines are not followed, seq gaps are those skipped log events, not losses.

Each browser has a bounded queue of ready-to-send JSON texts. A slow browser never blocks the others: when its queue
is full the queue is dropped and replaced by one fresh snapshot (which already contains everything the dropped events
carried).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Any, Callable

import msgspec
import zmq
import zmq.asyncio

from omnibroker import protocol
from omnibroker.client import AsyncClient, subscribe_socket

log = logging.getLogger("omnibridge.hub")

QUEUE_SIZE = 1000          # messages queued per browser before it gets a fresh snapshot instead
LOG_LINES = 500            # log entries per plugin kept for late joiners
IDLE_CHECK = 2.0           # seconds between checks of the broker (alive? same epoch? same plugin set?)
RETRY = 1.0                # seconds between snapshot attempts while the broker is down

# the broker's omni.toml problems: {"path": str, "error": str} (error "" once the file loads), meta pluginID ""
CONFIG = "omni/config"
# always followed; protocol.LOG only while a browser is connected
QUIET_TOPICS = (protocol.STATUS, protocol.ERROR, protocol.RELOAD_START, protocol.RELOAD_COMPLETE,
                protocol.RELOAD_ERROR, CONFIG)

# errors stay listed until a build succeeds (goStatus becomes ready), a reload completes, or an empty error event
_CLEARING_GO = ("ready",)


class Peer:
    """One browser's outgoing queue (texts), drained by its sender task."""

    def __init__(self, hub: "Hub", name: str, maxlen: int = QUEUE_SIZE):
        self.hub = hub
        self.name = name
        self.maxlen = maxlen
        self.queue: collections.deque[str] = collections.deque()
        self.ready = asyncio.Event()
        self.overflows = 0
        self.sent = 0

    def push(self, text: str, snapshot: Callable[[], str]) -> None:
        if len(self.queue) >= self.maxlen:
            self.queue.clear()
            self.overflows += 1
            self.hub.overflows += 1
            log.warning("browser %s is too slow (%d queued): dropping its queue, sending a fresh snapshot",
                        self.name, self.maxlen)
            self.queue.append(snapshot())
        else:
            self.queue.append(text)
        self.ready.set()

    def push_now(self, text: str) -> None:
        """Queue a message that must not be dropped (a snapshot the browser asked for)."""
        self.queue.append(text)
        self.ready.set()

    async def next(self) -> str:
        while not self.queue:
            self.ready.clear()
            await self.ready.wait()
        return self.queue.popleft()


class Hub:
    def __init__(self, ctx: zmq.asyncio.Context | None = None, queue_size: int = QUEUE_SIZE,
                 log_lines: int = LOG_LINES):
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.queue_size = queue_size
        self.log_lines = log_lines
        self.client = AsyncClient(context=self.ctx)
        self.sub = subscribe_socket(self.ctx, topics=QUIET_TOPICS)
        self.following_logs = False
        self._logs_settled = False      # a log event arrived since subscribing: from then on, every seq gap is a loss
        self._logs_fetch: asyncio.Future | None = None
        self._tails_fetched = False     # the log tails since following began are in (else: at the next resync)
        self._arriving = 0              # browsers waiting for their first snapshot (not in `peers` yet)
        self.peers: set[Peer] = set()
        # the state browsers start from
        self.epoch = ""
        self.seq = 0
        self.plugins: dict[str, dict] = {}
        self.logs: dict[str, collections.deque] = {}
        self.errors: dict[str, list] = {}
        self.config_error = ""          # the broker's `configError`, kept current by omni/config events
        self.broker_connected = False
        self.synced = False
        self._fetched: set[tuple] = set()      # log entries fetched with `logs` at first sync (de-dup vs events)
        self._fetched_until = 0.0
        # counters (GET /stats)
        self.events = 0
        self.resyncs = 0
        self.gaps = 0
        self.overflows = 0
        self.bad_events = 0
        self._snapshot_text: str | None = None
        self._check_soon = False
        self.synced_event = asyncio.Event()

    # --- browsers ----------------------------------------------------------------------------------------------
    async def add_peer(self, name: str) -> Peer:
        """A browser arrived: it starts from a snapshot that includes each plugin's log tail."""
        if not self.following_logs:
            self.following_logs, self._logs_settled = True, False
            self.logs.clear()           # stale since the last browser left; the fetch brings the current tails
            self.sub.setsockopt(zmq.SUBSCRIBE, protocol.LOG.encode())
            self._tails_fetched = False
            if self.broker_connected:   # else the browser is not kept waiting: the resync that finds it fetches
                self._logs_fetch = asyncio.ensure_future(self._fetch_logs())
        self._arriving += 1
        try:
            if self._logs_fetch is not None:
                await asyncio.shield(self._logs_fetch)      # browsers arriving together share one fetch
            peer = Peer(self, name, self.queue_size)
            peer.push_now(self.snapshot_text())
            self.peers.add(peer)
            return peer
        finally:
            self._arriving -= 1
            self._stop_following_if_alone()

    def remove_peer(self, peer: Peer) -> None:
        self.peers.discard(peer)
        self._stop_following_if_alone()

    def _stop_following_if_alone(self) -> None:
        if not self.peers and not self._arriving and self.following_logs:
            self.following_logs = False
            self.sub.setsockopt(zmq.UNSUBSCRIBE, protocol.LOG.encode())

    def snapshot_message(self) -> dict:
        return {"type": "snapshot", "epoch": self.epoch, "seq": self.seq, "plugins": self.plugins,
                "logs": {pid: list(lines) for pid, lines in self.logs.items()},
                "errors": self.errors, "configError": self.config_error,
                "broker": {"connected": self.broker_connected}}

    def snapshot_text(self) -> str:
        if self._snapshot_text is None:
            self._snapshot_text = json.dumps(self.snapshot_message(), separators=(",", ":"))
        return self._snapshot_text

    def _changed(self) -> None:
        self._snapshot_text = None

    def broadcast(self, text: str) -> None:
        for peer in list(self.peers):
            peer.push(text, self.snapshot_text)

    def broadcast_snapshot(self) -> None:
        text = self.snapshot_text()
        for peer in list(self.peers):
            peer.push(text, self.snapshot_text)

    def _set_broker(self, connected: bool) -> None:
        if connected != self.broker_connected:
            self.broker_connected = connected
            self._changed()
            self.broadcast(json.dumps({"type": "broker", "connected": connected}))

    # --- control requests from browsers ------------------------------------------------------------------------
    async def request(self, command: str, props: dict[str, Any], timeout: float) -> protocol.Reply:
        reply = await self.client.request(command, props, wait=timeout)
        if reply.status == "ok" and command in ("remove", "add"):
            self._check_soon = True     # no event says "removed": look at the broker's snapshot soon
        return reply

    # --- the loop ----------------------------------------------------------------------------------------------
    async def run(self) -> None:
        last_check = time.monotonic()
        while True:
            if not self.synced:
                if not await self.resync():
                    await asyncio.sleep(RETRY)
                last_check = time.monotonic()
                continue
            wait = 0 if self._check_soon else max(0.0, IDLE_CHECK - (time.monotonic() - last_check))
            if await self.sub.poll(int(wait * 1000)):
                # drain what is there (bounded) without going back to the poller for each event
                for _ in range(256):
                    try:
                        frames = await self.sub.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    await self.handle(frames)
            if self._check_soon or time.monotonic() - last_check >= IDLE_CHECK:
                self._check_soon = False
                await self.check()
                last_check = time.monotonic()

    async def check(self) -> None:
        """Idle check: is the broker there, same epoch, same plugin set?"""
        reply = await self.client.request("snapshot", {}, wait=IDLE_CHECK)
        if reply.status != "ok":
            self._set_broker(False)
            return
        self._set_broker(True)
        snap = reply.result
        if snap["epoch"] != self.epoch:
            log.info("broker epoch %s -> %s: resync", self.epoch, snap["epoch"])
            await self.resync(snap)
        elif snap["seq"] == self.seq and set(snap["plugins"]) != set(self.plugins):
            await self.resync(snap)     # a plugin was removed (no event says so)
        elif self.following_logs and not self._tails_fetched and self._logs_fetch is None:
            await self._fetch_logs()    # a browser came while the broker did not answer
            self.broadcast_snapshot()

    async def resync(self, snap: dict | None = None) -> bool:
        if snap is None:
            reply = await self.client.request("snapshot", {}, wait=5.0)
            if reply.status != "ok":
                self._set_broker(False)
                return False
            snap = reply.result
        first = not self.epoch
        self.epoch, self.seq, self.plugins = snap["epoch"], snap["seq"], dict(snap["plugins"])
        error = snap.get("configError")
        self.config_error = error if isinstance(error, str) else ""
        for gone in set(self.logs) - set(self.plugins):
            self.logs.pop(gone, None)
        for gone in set(self.errors) - set(self.plugins):
            self.errors.pop(gone, None)
        if self.following_logs and (first or not self._tails_fetched):
            await self._fetch_logs()
        self.resyncs += 1
        self.synced = True
        self.broker_connected = True
        self._changed()
        self.broadcast_snapshot()
        self.synced_event.set()
        return True

    async def _fetch_logs(self) -> None:
        """Each plugin's log tail from its worker, then the log events that raced the fetch and are not in it. Later
        events already in a tail are skipped for a while (`_fetched`)."""
        async def one(pid: str) -> bool:
            reply = await self.client.request("logs", {"plugin": pid, "count": self.log_lines}, wait=3.0)
            if reply.code == protocol.ErrorCode.TIMEOUT:
                return False        # the broker did not answer: try again when it does (check / resync)
            if reply.status == "ok" and isinstance(reply.result, dict):
                entries = reply.result.get("entries") or []
                keys = {_log_key(e) for e in entries}
                arrived = [e for e in self.logs.get(pid, ()) if _log_key(e) not in keys]
                self.logs[pid] = collections.deque([*entries, *arrived], maxlen=self.log_lines)
                self._fetched |= keys
            return True             # a tail, or an answer saying there is none to get (worker down)
        try:
            self._tails_fetched = all(await asyncio.gather(*(one(pid) for pid in self.plugins)))
        finally:
            self._logs_fetch = None
        self._fetched_until = time.monotonic() + 10.0     # only events racing the fetch can repeat an entry
        self._changed()

    async def handle(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            self.bad_events += 1
            return
        try:
            topic = frames[0].decode()
            meta = protocol.decode_meta(frames[2])
            payload = msgspec.json.decode(frames[1])
        except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            self.bad_events += 1
            return
        if meta.epoch != self.epoch:
            if not await self.resync():
                self.synced = False
                return
            if meta.epoch != self.epoch or meta.seq <= self.seq:
                return
        elif meta.seq <= self.seq:
            return                  # already in the snapshot
        elif meta.seq != self.seq + 1 and not (self.following_logs and self._logs_settled):
            # skipped log events (not followed, or not yet: the subscription is on its way), not losses
            if topic == protocol.LOG:
                self._logs_settled = self.following_logs
            self.seq = meta.seq
            self.events += 1
            self._apply(topic, payload, meta.pluginID)
            self._changed()
            if self.peers:
                self.broadcast_snapshot()   # browsers check seq too: they start over from this state, gap-free
            return
        elif meta.seq != self.seq + 1:
            self.gaps += meta.seq - self.seq - 1
            log.warning("missed %d events (seq %d -> %d): resync", meta.seq - self.seq - 1, self.seq, meta.seq)
            if not await self.resync():
                self.synced = False
                return
            if meta.seq <= self.seq:
                return
        if topic == protocol.LOG and self.following_logs:
            self._logs_settled = True
        self.seq = meta.seq
        self.events += 1
        self._apply(topic, payload, meta.pluginID)
        self._changed()
        text = ('{"type":"event","topic":' + json.dumps(topic) + ',"payload":' + frames[1].decode()
                + ',"meta":' + frames[2].decode() + '}')
        self.broadcast(text)

    def _apply(self, topic: str, payload: Any, plugin: str) -> None:
        if topic == protocol.STATUS and isinstance(payload, dict):
            prev = self.plugins.get(plugin) or {}
            self.plugins[plugin] = payload
            if payload.get("goStatus") in _CLEARING_GO and prev.get("goStatus") not in _CLEARING_GO:
                self.errors.pop(plugin, None)
        elif topic == protocol.LOG and isinstance(payload, list):
            buf = self.logs.setdefault(plugin, collections.deque(maxlen=self.log_lines))
            if self._fetched and time.monotonic() > self._fetched_until:
                self._fetched.clear()
            for e in payload:
                if self._fetched:
                    key = _log_key(e)
                    if key in self._fetched:
                        self._fetched.discard(key)
                        continue
                buf.append(e)
        elif topic == protocol.ERROR and isinstance(payload, dict):
            errors = payload.get("errors") or []
            if errors:
                self.errors[plugin] = errors
            else:
                self.errors.pop(plugin, None)
        elif topic == protocol.RELOAD_COMPLETE:
            self.errors.pop(plugin, None)
        elif topic == CONFIG and isinstance(payload, dict):
            error = payload.get("error")
            self.config_error = error if isinstance(error, str) else ""

    def stats(self) -> dict:
        return {"epoch": self.epoch, "seq": self.seq, "plugins": len(self.plugins), "browsers": len(self.peers),
                "events": self.events, "resyncs": self.resyncs, "gaps": self.gaps, "overflows": self.overflows,
                "badEvents": self.bad_events, "brokerConnected": self.broker_connected, "time": time.time()}

    def close(self) -> None:
        self.client.close()
        self.sub.close(0)


def _log_key(e: Any) -> tuple:
    if not isinstance(e, dict):
        return ()
    return (e.get("timestamp"), e.get("source"), e.get("message"))
