"""The one place events leave the broker: stamps `epoch`/`seq`, keeps the latest DevServerState of every plugin
(for `status`, `list` and `snapshot`) and publishes on the XPUB socket.

Late joiners follow the ZeroMQ guide's Clone pattern: subscribe, `snapshot`, then apply events with seq > the
snapshot's; a new epoch means the broker restarted.
"""
from __future__ import annotations

import errno
import logging
import os
import time
import uuid

import msgspec
import zmq

from . import protocol
from .files import write_atomic
from .protocol import DevServerState, EventMeta
from .security import secure_server
from .zstream import send_frames

log = logging.getLogger("omnibroker")


def new_epoch() -> str:
    # Sortable by start time, unique across restarts within the same second.
    return f"{int(time.time()):x}-{uuid.uuid4().hex[:8]}"


def write_epoch(epoch: str) -> None:
    """Tell running workers this broker's epoch (they register again when it changes). In a full runtime dir the
    atomic replace fails; epochs all have one length, so the old bytes are overwritten in place (no new space)."""
    path = protocol.epoch_path()
    try:
        write_atomic(path, epoch, fsync=False)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or os.path.getsize(path) != len(epoch):
            raise
        log.error("the runtime dir is full (%s): writing the epoch into %s in place", e.strerror, path)
        with open(path, "r+b") as f:
            f.write(epoch.encode())


class EventBus:
    def __init__(self, socket: zmq.Socket, epoch: str | None = None):
        self.socket = socket
        self.epoch = epoch or new_epoch()
        self.seq = 0
        self.states: dict[str, DevServerState] = {}
        self.published = 0

    def publish(self, topic: str, payload: bytes | object, plugin: str) -> EventMeta:
        """Publish one event; `payload` is ready JSON bytes (a worker's) or a protocol struct. Returns its stamp."""
        self.seq += 1
        meta = EventMeta(epoch=self.epoch, seq=self.seq, ts=time.time(), pluginID=plugin)
        frames = protocol.event_frames(topic, payload, meta)
        try:
            send_frames(self.socket, frames)
        except zmq.Again:       # XPUB never blocks in practice (drops at HWM per subscriber); be safe
            pass
        self.published += 1
        return meta

    def status(self, state: DevServerState) -> EventMeta:
        """Record and publish a plugin's state."""
        self.states[state.pluginID] = state
        return self.publish(protocol.STATUS, state, state.pluginID)

    def worker_status(self, topic: str, payload: bytes, plugin: str) -> None:
        """An event from a worker: cache status payloads, publish the worker's bytes unchanged. A payload over
        MAX_EVENT_BYTES is not published (it is what bounds a slow subscriber's queue): a log event says so."""
        if len(payload) > protocol.MAX_EVENT_BYTES:
            message = (f"a {topic} event of {len(payload)} bytes was not published: events are limited to "
                       f"{protocol.MAX_EVENT_BYTES} bytes (MAX_EVENT_BYTES)")
            self.publish(protocol.LOG, protocol.log_payload(plugin, "manager", "error", message), plugin)
            return
        if topic == protocol.STATUS:
            try:
                state = protocol.decode_state(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return      # a broken worker does not get to publish garbage
            if state.pluginID != plugin:
                return
            self.states[plugin] = state
        self.publish(topic, payload, plugin)

    def forget(self, plugin: str) -> None:
        self.states.pop(plugin, None)

    def snapshot(self) -> dict:
        return {"epoch": self.epoch, "seq": self.seq,
                "plugins": {pid: protocol.to_builtins(s) for pid, s in self.states.items()}}


def bind_xpub(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, protocol.EVENTS_SNDHWM)
    sock.setsockopt(zmq.LINGER, 0)
    bind(sock, endpoint)
    return sock


def bind(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, removing a stale ipc socket file a killed broker left behind; ipc files get mode 0600; TCP only
    with CURVE (security.py)."""
    secure_server(sock, endpoint)
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)       # the socket file is created 0600 (rw: connecting needs write permission)
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old)
    else:
        sock.bind(endpoint)
