"""The client library: control requests (Lazy Pirate retries) and event subscriptions (Clone-pattern resync).

Used by omnictl, the bridge, the tests and the benchmarks; nothing else builds control messages.
"""
from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import zmq

from . import protocol
from .security import secure_client

if TYPE_CHECKING:       # asyncio is imported only by AsyncClient users: omnictl starts faster without it
    import asyncio


class BrokerUnavailable(Exception):
    """No answer from the control socket after the retries."""


class CommandFailed(Exception):
    """The broker answered with an error reply."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


_ids = itertools.count(1)


def _request_bytes(command: str, props: dict[str, Any]) -> tuple[str, bytes]:
    rid = f"{os.getpid()}-{next(_ids)}"
    return rid, protocol.encode(protocol.Request(id=rid, command=command, properties=props))


def _result(reply: protocol.Reply) -> Any:
    if reply.status != "ok":
        raise CommandFailed(reply.code, reply.reason)
    return reply.result


class Client:
    """Blocking control client. `timeout` per try; `retries` tries (Lazy Pirate: a fresh socket each retry)."""

    def __init__(self, endpoint: str | None = None, timeout: float = 5.0, retries: int = 3,
                 context: zmq.Context | None = None):
        self.endpoint = endpoint or protocol.endpoint("control")
        self.timeout = timeout
        self.retries = retries
        self.ctx = context or zmq.Context.instance()
        self.sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self.sock is None:
            self.sock = self.ctx.socket(zmq.REQ)
            self.sock.setsockopt(zmq.LINGER, 0)
            secure_client(self.sock, self.endpoint)
            self.sock.connect(self.endpoint)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def request(self, command: str, properties: dict[str, Any] | None = None, /, *, wait: float | None = None,
                **props: Any) -> protocol.Reply:
        """Send one request; return the Reply (ok or error). Raises BrokerUnavailable after the retries.

        Properties come as a dict, keywords, or both; `wait` is this client's own patience per try."""
        rid, body = _request_bytes(command, {**(properties or {}), **props})
        wait_ms = int((wait or self.timeout) * 1000)
        for _ in range(max(1, self.retries)):
            sock = self._socket()
            sock.send(body)
            if sock.poll(wait_ms, zmq.POLLIN):
                reply = protocol.decode_reply(sock.recv())
                if str(reply.id) == rid or reply.id is None:
                    return reply
            self.close()        # a REQ socket that timed out is stuck: throw it away (Lazy Pirate)
        raise BrokerUnavailable(f"no answer from {self.endpoint} after {self.retries} tries of "
                                f"{wait_ms / 1000:g}s; is the broker running (supervisord -c supervisor.d/omni.conf)?")

    def call(self, command: str, properties: dict[str, Any] | None = None, /, *, wait: float | None = None,
             **props: Any) -> Any:
        """Send one request and return its result; raises CommandFailed on an error reply."""
        return _result(self.request(command, properties, wait=wait, **props))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient:
    """asyncio control client on a DEALER: many requests in flight, matched by id."""

    def __init__(self, endpoint: str | None = None, context: Any = None):
        import zmq.asyncio
        self.endpoint = endpoint or protocol.endpoint("control")
        self.ctx = context or zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        secure_client(self.sock, self.endpoint)
        self.sock.connect(self.endpoint)
        self.pending: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            try:
                reply = protocol.decode_reply(frames[-1])
            except Exception:       # noqa: BLE001 - ignore what is not a reply
                continue
            fut = self.pending.pop(str(reply.id), None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def request(self, command: str, properties: dict[str, Any] | None = None, /, *, wait: float = 30.0,
                      **props: Any) -> protocol.Reply:
        import asyncio
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        rid, body = _request_bytes(command, {**(properties or {}), **props})
        fut = self.pending[rid] = asyncio.get_running_loop().create_future()
        await self.sock.send_multipart([b"", body])
        try:
            return await asyncio.wait_for(fut, wait)
        except asyncio.TimeoutError:
            self.pending.pop(rid, None)
            return protocol.error_reply(rid, protocol.ErrorCode.TIMEOUT,
                                        f"no answer from {self.endpoint} within {wait:g}s")

    async def call(self, command: str, properties: dict[str, Any] | None = None, /, *, wait: float = 30.0,
                   **props: Any) -> Any:
        return _result(await self.request(command, properties, wait=wait, **props))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close(0)


class Event(NamedTuple):
    topic: str
    payload: Any
    meta: protocol.EventMeta


def subscribe_socket(ctx: zmq.Context, endpoint: str | None = None, topics: tuple[str, ...] = ()) -> zmq.Socket:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, protocol.SUBSCRIBER_RCVHWM)
    for topic in topics or ("",):
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    endpoint = endpoint or protocol.endpoint("events")
    secure_client(sock, endpoint)
    sock.connect(endpoint)
    return sock


def parse_event(frames: list[bytes]) -> Event:
    return Event(frames[0].decode(), protocol.decode_json(frames[1]), protocol.decode_meta(frames[2]))


class Subscriber:
    """Events in order with a consistent starting state (ZeroMQ guide, Clone pattern).

    `states` is the latest DevServerState per plugin (as dicts). A gap in `seq` or a new `epoch` triggers a fresh
    `snapshot`; `resyncs` counts them and `gaps` the events that were missed.
    """

    def __init__(self, client: Client | None = None, endpoint: str | None = None, topics: tuple[str, ...] = ()):
        self.client = client or Client()
        self.sock = subscribe_socket(self.client.ctx, endpoint, topics)
        self.epoch = ""
        self.seq = 0
        self.states: dict[str, dict] = {}
        self.resyncs = 0
        self.gaps = 0
        self.all_topics = not topics      # with a topic filter, seq gaps are other topics, not losses
        self._synced = False

    def resync(self) -> None:
        snap = self.client.call("snapshot")
        self.epoch, self.seq, self.states = snap["epoch"], snap["seq"], snap["plugins"]
        self.resyncs += 1
        self._synced = True

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events after the snapshot; stops after `timeout` seconds without one (None: never)."""
        # Subscribe first, then snapshot: anything published in between is either in the snapshot or newer.
        if not self._synced:
            self.resync()
        wait_ms = None if timeout is None else int(timeout * 1000)
        while True:
            if not self.sock.poll(wait_ms):
                return
            ev = parse_event(self.sock.recv_multipart())
            if ev.meta.epoch != self.epoch:
                self.resync()
                if ev.meta.epoch != self.epoch or ev.meta.seq <= self.seq:
                    continue
            elif ev.meta.seq <= self.seq:
                continue        # already in the snapshot
            elif ev.meta.seq != self.seq + 1 and self.all_topics:
                self.gaps += ev.meta.seq - self.seq - 1
                self.resync()
                if ev.meta.seq <= self.seq:
                    continue
            self.seq = ev.meta.seq
            if ev.topic == protocol.STATUS and isinstance(ev.payload, dict):
                self.states[ev.meta.pluginID] = ev.payload
            yield ev

    def close(self) -> None:
        self.sock.close(0)
