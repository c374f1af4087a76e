"""Each part's own state, and the one function that composes DevServerState from them.

A part (the DevServer's mode, Vite, the managed Go path, the external follower) holds a `PartState`: a named state
(an enum) whose allowed transitions are written down below, the few DevServerState fields only that part knows
(`pluginPid`, `vitePort`, ...), its own last error and its restart count. A part changes its state with
`change_state` (an unlisted transition is a bug: `InvalidTransition` is logged and raised) or its fields with
`update`; either recomposes DevServerState (`compose`) and publishes it when it changed. Nothing else writes
DevServerState.

Derived fields are not stored: `grpcConnected` is "a plugin process serves calls" (the Go path: a pid is serving;
external: CONNECTED), `viteURL` is set exactly when Vite is ready, `debugPort`/`paused`/`pausedAt` are the managed
Go path's (its debug session: 0/false/"" outside debug mode and in external mode), `restarts` sums the parts'
restarts, `lastError` is the newest error of any part (a part clearing its error uncovers another part's).
"""
from __future__ import annotations

import enum
import itertools
import logging
from typing import Any, Callable

from omnibroker import protocol
from omnibroker.protocol import DevServerState

log = logging.getLogger("omniworker")


class InvalidTransition(RuntimeError):
    """A part asked for a transition its table does not list: a bug in the part."""


class Mode(enum.Enum):
    IDLE = "idle"
    MANAGED = "managed"
    EXTERNAL = "external"


class ViteStatus(enum.Enum):
    """`viteStatus` of the managed Vite (Omniview's words)."""
    IDLE = "idle"               # no ui/ dir, or never started
    STARTING = "starting"       # spawned (or restarting), not answering HTTP yet
    READY = "ready"             # answers HTTP on vitePort
    ERROR = "error"             # cannot run, exited, or did not answer in time (a restart may follow)
    STOPPED = "stopped"         # stopped on request


class GoStatus(enum.Enum):
    """`goStatus` of the managed Go path."""
    IDLE = "idle"               # no Go backend, or never started
    STARTING = "starting"       # watching; a plugin process is being started (first start, switch, crash restart)
    BUILDING = "building"       # the build command runs
    READY = "ready"             # the last cycle ended with its plugin serving
    ERROR = "error"             # the last build, install or start failed (an older plugin may still serve)
    STOPPED = "stopped"         # stopped on request


class ExternalStatus(enum.Enum):
    """The external follower's connection to the developer's process; `go_status` is what Omniview is shown."""
    IDLE = "idle"               # not following, or no .devinfo seen since attach
    CONNECTING = "connecting"   # the file names a new process (a restart): connecting to it
    CONNECTED = "connected"     # connected and answering health checks
    UNHEALTHY = "unhealthy"     # connected, alive, not answering health checks
    INVALID = "invalid"         # the file is wrong, or its process refused the connection
    GONE = "gone"               # the process exited or its file was removed

    @property
    def go_status(self) -> str:
        return _EXTERNAL_GO_STATUS[self]


_EXTERNAL_GO_STATUS = {ExternalStatus.IDLE: "idle", ExternalStatus.CONNECTING: "starting",
                       ExternalStatus.CONNECTED: "running", ExternalStatus.UNHEALTHY: "running",
                       ExternalStatus.INVALID: "error", ExternalStatus.GONE: "stopped"}

# Allowed transitions (a state to itself is always allowed: an update of fields).
TRANSITIONS: dict[type[enum.Enum], dict[Any, set[Any]]] = {
    Mode: {
        Mode.IDLE: {Mode.MANAGED, Mode.EXTERNAL},          # start / attach
        Mode.MANAGED: {Mode.IDLE},                          # stop (attach and restart stop first)
        Mode.EXTERNAL: {Mode.IDLE},                         # detach
    },
    ViteStatus: {
        ViteStatus.IDLE: {ViteStatus.STARTING, ViteStatus.ERROR, ViteStatus.STOPPED},
        ViteStatus.STARTING: {ViteStatus.READY, ViteStatus.ERROR, ViteStatus.STOPPED, ViteStatus.IDLE},
        ViteStatus.READY: {ViteStatus.ERROR, ViteStatus.STOPPED},                    # crash / stop
        ViteStatus.ERROR: {ViteStatus.STARTING, ViteStatus.STOPPED, ViteStatus.IDLE},  # BACKOFF -> STARTING
        ViteStatus.STOPPED: {ViteStatus.STARTING, ViteStatus.ERROR, ViteStatus.IDLE},
    },
    GoStatus: {
        GoStatus.IDLE: {GoStatus.STARTING, GoStatus.STOPPED},
        GoStatus.STARTING: {GoStatus.BUILDING, GoStatus.READY, GoStatus.ERROR, GoStatus.STOPPED},
        GoStatus.BUILDING: {GoStatus.STARTING, GoStatus.ERROR, GoStatus.STOPPED},  # built -> switch
        GoStatus.READY: {GoStatus.BUILDING, GoStatus.STARTING, GoStatus.ERROR, GoStatus.STOPPED},
        GoStatus.ERROR: {GoStatus.BUILDING, GoStatus.STARTING, GoStatus.STOPPED},
        GoStatus.STOPPED: {GoStatus.STARTING, GoStatus.IDLE},
    },
    ExternalStatus: {
        ExternalStatus.IDLE: {ExternalStatus.CONNECTED, ExternalStatus.INVALID, ExternalStatus.GONE},
        ExternalStatus.CONNECTING: {ExternalStatus.CONNECTED, ExternalStatus.INVALID, ExternalStatus.GONE,
                                    ExternalStatus.IDLE},
        ExternalStatus.CONNECTED: {ExternalStatus.UNHEALTHY, ExternalStatus.CONNECTING, ExternalStatus.INVALID,
                                   ExternalStatus.GONE, ExternalStatus.IDLE},
        ExternalStatus.UNHEALTHY: {ExternalStatus.CONNECTED, ExternalStatus.CONNECTING, ExternalStatus.INVALID,
                                   ExternalStatus.GONE, ExternalStatus.IDLE},
        ExternalStatus.INVALID: {ExternalStatus.CONNECTED, ExternalStatus.CONNECTING, ExternalStatus.GONE,
                                 ExternalStatus.IDLE},
        ExternalStatus.GONE: {ExternalStatus.CONNECTED, ExternalStatus.INVALID, ExternalStatus.IDLE},
    },
}

_errors = itertools.count(1)       # orders the parts' errors: the newest one is lastError


class PartState:
    """One part's state: `state` (an enum of TRANSITIONS), its own `fields`, `error`, `restarts`."""

    def __init__(self, name: str, initial: enum.Enum, fields: dict[str, Any], on_change: Callable[[], None]):
        self.name = name
        self.state = initial
        self.fields = dict(fields)
        self.error = ""
        self.error_seq = 0
        self.restarts = 0
        self._on_change = on_change

    def change_state(self, new: enum.Enum, **fields: Any) -> None:
        old = self.state
        if new is not old and new not in TRANSITIONS[type(old)][old]:
            msg = f"{self.name}: invalid transition {old.name} -> {new.name}"
            log.error(msg)
            raise InvalidTransition(msg)
        self.state = new
        self._apply(fields)
        self._on_change()

    def update(self, **fields: Any) -> None:
        self._apply(fields)
        self._on_change()

    def set_error(self, message: str) -> None:
        self._set_error(message)
        self._on_change()

    def count_restart(self) -> None:
        self.restarts += 1
        self._on_change()

    def forget_error(self) -> None:
        """Clear the error without recomposing: for a caller whose next change recomposes."""
        self._set_error("")

    def _apply(self, fields: dict[str, Any]) -> None:
        if "lastError" in fields:
            self._set_error(fields.pop("lastError"))
        for key, value in fields.items():
            if key not in self.fields:
                raise KeyError(f"{self.name} does not own the field {key!r}")
            self.fields[key] = value

    def _set_error(self, message: str) -> None:
        self.error = message
        self.error_seq = next(_errors) if message else 0


def compose(base: DevServerState, mode: PartState, vite: PartState, go: PartState,
            external: PartState) -> dict[str, Any]:
    """The DevServerState fields the parts determine now (`base` gives the rest)."""
    if mode.state is Mode.EXTERNAL:
        vite_status, vite_port = external.fields["viteStatus"], external.fields["vitePort"]
        go_status = external.state.go_status
        pid = external.fields["pluginPid"]
        connected = external.state is ExternalStatus.CONNECTED
        debug_port, paused, paused_at = 0, False, ""
    else:
        vite_status, vite_port = vite.state.value, vite.fields["vitePort"]
        go_status = go.state.value
        pid = go.fields["pluginPid"]
        connected = bool(pid)
        debug_port, paused, paused_at = go.fields["debugPort"], go.fields["paused"], go.fields["pausedAt"]
    newest = max((mode, vite, go, external), key=lambda p: p.error_seq)
    return dict(mode=mode.state.value, viteStatus=vite_status, vitePort=vite_port,
                viteURL=f"http://127.0.0.1:{vite_port}" if vite_status == "ready" and vite_port else "",
                goStatus=go_status, grpcConnected=connected, pluginPid=pid,
                buildQueued=go.fields["buildQueued"], lastBuildTime=go.fields["lastBuildTime"],
                lastBuildDuration=go.fields["lastBuildDuration"], restarts=vite.restarts + go.restarts,
                debugPort=debug_port, paused=paused, pausedAt=paused_at,
                lastError=protocol.clip(newest.error) if newest.error_seq else "")
