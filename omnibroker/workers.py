"""The broker's bookkeeping of worker processes: one WorkerLink per registered worker, the broker-wide build slots,
and the liveness loop that notices a worker gone silent.

A worker is alive to the broker while its WorkerLink is in `Broker.workers`; `Broker._drop_link` is the one place a
link leaves (and every structure that refers to it is cleaned there).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import Callable

from . import protocol
from .process import PidWatch

UNRESPONSIVE_RESTART = 10.0     # a worker lost this long is restarted through supervisord


class WorkerLink:
    """The broker's view of one worker process (one incarnation: its DEALER identity carries its pid)."""

    def __init__(self, identity: bytes, pid: int):
        self.identity = identity
        self.pid = pid
        self.last_seen = time.monotonic()
        self.alive_file: tuple[int, int] | None = None      # (mtime_ns, inode) of its alive file at the last look
        self.lost_since = 0.0
        self.watch: PidWatch | None = None                  # its exit, the moment it happens (pidfd)


class BuildSlots:
    """Broker-wide cap on concurrent builds; waiting builds are granted in arrival order.

    A token is held until its worker releases it or goes away (exited, killed, unresponsive, removed, replaced by a
    new incarnation): every one of those paths calls `release` or `release_worker`. Releasing an unknown or already
    released token does nothing. A worker asks again for a token it is still waiting for (in case the broker
    restarted and forgot it): asking for a token that is waiting or held changes nothing (no second grant, no
    second place in the queue). A hung build holds its slot at most `[build] timeout_s` (gobuild.py)."""

    def __init__(self, capacity: int, grant: Callable[[bytes, str], None]):
        self.capacity = max(1, capacity)
        self.grant = grant
        self.holders: dict[str, bytes] = {}
        self.waiting: deque[tuple[str, bytes]] = deque()

    def acquire(self, token: str, identity: bytes) -> None:
        if token in self.holders or any(w[0] == token for w in self.waiting):
            return
        self.waiting.append((token, identity))
        self._pump()

    def release(self, token: str) -> None:
        self.holders.pop(token, None)
        self.waiting = deque(w for w in self.waiting if w[0] != token)
        self._pump()

    def resize(self, capacity: int) -> None:
        """A new capacity (omni.toml reloaded): builds holding a slot keep it; waiting ones get the new room."""
        self.capacity = max(1, capacity)
        self._pump()

    def release_worker(self, identity: bytes) -> None:
        for token in [t for t, i in self.holders.items() if i == identity]:
            del self.holders[token]
        self.waiting = deque(w for w in self.waiting if w[1] != identity)
        self._pump()

    def _pump(self) -> None:
        while self.waiting and len(self.holders) < self.capacity:
            token, identity = self.waiting.popleft()
            self.holders[token] = identity
            self.grant(identity, token)


async def liveness_loop(workers: dict[str, WorkerLink], seen: Callable[[str, WorkerLink, float], None],
                        lost: Callable[[str], None], unresponsive: Callable[[str, WorkerLink, float], None]) -> None:
    """Every HEARTBEAT_INTERVAL/4: a worker whose alive file changed since the last look is `seen`; one silent for
    HEARTBEAT_LIVENESS is `lost` (once); one lost for UNRESPONSIVE_RESTART more is `unresponsive` (the broker drops
    and restarts it). The alive file's change is what counts, never its time: a wall-clock jump is no death."""
    while True:
        await asyncio.sleep(protocol.HEARTBEAT_INTERVAL / 4)
        now = time.monotonic()
        for plugin, link in list(workers.items()):
            try:
                st = os.stat(protocol.alive_path(plugin))
                touched = (st.st_mtime_ns, st.st_ino)
            except OSError:
                touched = None
            if touched is not None and touched != link.alive_file:
                link.alive_file = touched
                seen(plugin, link, now)
            silent = now - link.last_seen
            if silent > protocol.HEARTBEAT_LIVENESS and not link.lost_since:
                link.lost_since = now
                lost(plugin)
            elif link.lost_since and now - link.lost_since > UNRESPONSIVE_RESTART:
                unresponsive(plugin, link, silent)


def is_worker_of(pid: int, plugin: str) -> bool:
    """Whether `pid` is an omniworker process for `plugin` (its command line says so: exec'd, or a title set by
    omniworker/preload.py, which /proc shows as one string)."""
    import psutil
    try:
        args = " ".join(psutil.Process(pid).cmdline()).split()
    except psutil.Error:
        return False
    return "omniworker.worker" in args and ["--plugin", plugin] in (args[i:i + 2] for i in range(len(args)))
