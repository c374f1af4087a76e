"""What every part of a worker (vite, gowatch, gobuild, goplugin, external) gets: the plugin's identity and
settings, its own PartState (state.py) from which DevServerState is composed, and the only ways out — status, log,
error and legacy events, and build slots.

Parts never talk to the broker directly; the worker's link implements `EventSink`.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections import deque
from typing import Any, AsyncIterator, Protocol

import msgspec

from omnibroker import pluginmeta, protocol
from omnibroker.protocol import BuildError, DevServerState, LogEntry
from omnibroker.settings import PluginSettings, check_plugin

from .children import ChildRegistry
from .state import ExternalStatus, GoStatus, Mode, PartState, ViteStatus, compose

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*(\x07|\x1b\\)")


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


class EventSink(Protocol):
    def publish(self, topic: str, payload: Any) -> None: ...
    async def build_slot(self) -> AsyncIterator[None]: ...
    async def other_port(self, kind: str, taken: int) -> int: ...


class LogBook:
    """Ring buffers of log entries: one per source (`per_source` lines) and the plugin's total (`total`)."""

    def __init__(self, per_source: int = 2000, total: int = 5000):
        self.per_source = per_source
        self.all: deque[LogEntry] = deque(maxlen=total)
        self.by_source: dict[str, deque[LogEntry]] = {}

    def add(self, entry: LogEntry) -> None:
        self.all.append(entry)
        self.by_source.setdefault(entry.source, deque(maxlen=self.per_source)).append(entry)

    def tail(self, count: int = 200, source: str | None = None) -> list[LogEntry]:
        buf = self.by_source.get(source, ()) if source else self.all
        count = max(0, count)
        return list(buf)[-count:] if count else []


class PluginContext:
    """`settings` is the plugin's table decoded once into the typed schema (omnibroker/settings.py, which holds every
    default and unit); a table the schema refuses raises settings.SettingsError naming the key."""

    def __init__(self, spec: protocol.PluginSpec, sink: EventSink):
        self.id = spec.id
        self.dir = os.path.abspath(spec.path)
        self.settings: PluginSettings = check_plugin(dict(spec.settings))[0]
        self.home = protocol.plugin_home(spec.id)
        self.sink = sink
        self.state = DevServerState(pluginID=spec.id, devPath=self.dir, workerPid=os.getpid(), workerStatus="up")
        self.logs = LogBook(per_source=self.settings.log_lines_per_source, total=self.settings.log_lines)
        self.children = ChildRegistry(spec.id)
        self._batch = 0
        self._dirty = False
        self.mode = PartState("mode", Mode.IDLE, {}, self._changed)
        self.vite = PartState("vite", ViteStatus.IDLE, {"vitePort": 0}, self._changed)
        self.go = PartState("go", GoStatus.IDLE, {"pluginPid": 0, "buildQueued": False,
                                                  "lastBuildTime": protocol.ZERO_TIME, "lastBuildDuration": 0,
                                                  "debugPort": 0, "paused": False, "pausedAt": ""},
                            self._changed)
        self.external = PartState("external", ExternalStatus.IDLE, {"pluginPid": 0, "vitePort": 0,
                                                                      "viteStatus": "idle"}, self._changed)
        self._meta: dict[str, Any] | None = None
        self._meta_key: tuple | None = None

    # --- state -------------------------------------------------------------------------------------------------
    def _changed(self) -> None:
        """A part changed: compose DevServerState again; publish a status event if anything changed."""
        if self._batch:
            self._dirty = True
            return
        changed = False
        for name, value in compose(self.state, self.mode, self.vite, self.go, self.external).items():
            if getattr(self.state, name) != value:
                setattr(self.state, name, value)
                changed = True
        if changed:
            self.publish_status()

    @contextlib.contextmanager
    def batch(self):
        """Changes of several parts inside make one status event."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if not self._batch and self._dirty:
                self._dirty = False
                self._changed()

    def clear_errors(self) -> None:
        """Forget every part's error (a new mode begins); the next change publishes it."""
        for part in (self.mode, self.vite, self.go, self.external):
            part.forget_error()

    def publish_status(self) -> None:
        self.sink.publish(protocol.STATUS, self.state)

    # --- events ------------------------------------------------------------------------------------------------
    def log(self, source: str, level: str, message: str) -> None:
        entry = LogEntry(timestamp=protocol.now_rfc3339(), source=source, level=level,
                         message=protocol.clip(strip_ansi(message)), pluginID=self.id)
        self.logs.add(entry)
        self.sink.publish(protocol.LOG, [entry])

    def errors(self, errors: list[BuildError]) -> None:
        """Publish build errors: the first ones that fit in an event (MAX_EVENT_BYTES), and how many more there were."""
        shown = [msgspec.structs.replace(e, message=protocol.clip(e.message)) for e in errors]
        payload = protocol.ErrorPayload(pluginID=self.id, errors=shown)
        while len(shown) > 1 and len(protocol.encode(payload)) > protocol.MAX_EVENT_BYTES - 200:
            del shown[len(shown) // 2:]
            payload = protocol.ErrorPayload(pluginID=self.id, errors=shown + [BuildError(
                message=f"{len(errors) - len(shown)} more errors not shown (events are limited to "
                        f"{protocol.MAX_EVENT_BYTES} bytes)")])
        self.sink.publish(protocol.ERROR, payload)

    def plugin_meta(self) -> dict[str, Any]:
        """The plugin's PluginMeta for the legacy reload events, read again whenever plugin.yaml changes. When it is
        missing, invalid or names another plugin: `{"id": <plugin id>}`, and one warning per version of the file."""
        try:
            st = os.stat(pluginmeta.path_of(self.dir))
            key: tuple | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if self._meta is None or key != self._meta_key:
            self._meta, warning = pluginmeta.for_events(self.id, self.dir)
            self._meta_key = key
            if warning:
                self.log("manager", "warn", warning)
        return self._meta

    def reload_start(self) -> None:
        self.sink.publish(protocol.RELOAD_START, self.plugin_meta())

    def reload_complete(self) -> None:
        self.sink.publish(protocol.RELOAD_COMPLETE, self.plugin_meta())

    def reload_error(self, error: str) -> None:
        self.sink.publish(protocol.RELOAD_ERROR, [self.plugin_meta(), error])

    # --- resources ---------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def build_slot(self) -> AsyncIterator[None]:
        """One of the broker-wide build slots (so ten plugins saved at once do not thrash the machine)."""
        self.go.update(buildQueued=True)
        try:
            async with self.sink.build_slot():
                self.go.update(buildQueued=False)
                yield
        finally:
            if self.go.fields["buildQueued"]:
                self.go.update(buildQueued=False)


class NullSink:
    """For unit tests and tools: collects events in a list; build slots are free."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    def publish(self, topic: str, payload: Any) -> None:
        self.events.append((topic, protocol.to_builtins(payload)))
        self.changed.set()

    @contextlib.asynccontextmanager
    async def build_slot(self) -> AsyncIterator[None]:
        yield

    async def other_port(self, kind: str, taken: int) -> int:
        raise protocol.CommandError(protocol.ErrorCode.NO_PORT, f"no broker to allocate another {kind} port")
