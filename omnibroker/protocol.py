"""Every message and event omni speaks, defined once.

Three surfaces, all JSON over ZeroMQ:
- control (REQ/REP):    Request -> Reply                          (public, docs/protocol.md)
- events  (PUB/SUB):    [topic, payload, meta]                    (public, Omniview-compatible payloads)
- worker link (DEALER/ROUTER): [kind, body...]                    (internal between broker and workers)

Nothing else in the code base builds these messages by hand: it calls the helpers here.
"""
from __future__ import annotations

import datetime as _dt
import re
import time
from typing import Any, Literal

import msgspec

from .errors import CommandError, ErrorCode  # noqa: F401  (re-exported: part of the protocol)
from .locations import (alive_dir, alive_path, config_path, endpoint, ensure_runtime_dir, epoch_path,  # noqa: F401
                        home_dir, plugin_home, runtime_dir)

VERSION = "0.1.0"

# --------------------------------------------------------------------------------------------------------------
# Limits: everything a client can make the broker hold is bounded (docs/protocol.md, "Limits")
#
# Control socket, per client (a client is a ROUTER identity: one connected REQ/DEALER socket):
#   queued replies  <= CONTROL_SNDHWM x MAX_REPLY_BYTES = 128 x 1 MiB = 128 MiB (libzmq drops replies beyond the
#                      HWM) + the socket's kernel send buffer (net.core.wmem_default, ~208 KiB)
#   requests held   <= MAX_IN_FLIGHT tasks (more are answered `busy` at once), each request <= MAX_REQUEST_BYTES
#   requests queued <= CONTROL_RCVHWM x MAX_REQUEST_BYTES = 128 MiB unread by the broker (then libzmq stops reading
#                      that client's socket: it waits, nothing is lost)
#   A client with at most CONTROL_SNDHWM requests outstanding never loses a reply.
# Events XPUB, per subscriber:
#   queued events   <= EVENTS_SNDHWM events: 4-7 MB of typical log events (0.4-0.7 KB each queued, measured),
#                      160 MiB at worst (every one MAX_EVENT_BYTES), + the kernel send buffer. A subscriber that falls
#                      further behind loses events and sees a `seq` gap, which it repairs with `snapshot`. (10,000 is
#                      what a subscriber that reads needs to take a burst of 10,000 events on a loaded machine.)
MAX_REQUEST_BYTES = 1 << 20          # the control socket's ZMQ_MAXMSGSIZE: libzmq disconnects a peer sending more
MAX_REPLY_BYTES = 1 << 20            # an encoded control reply over this becomes a `too_large` error
CONTROL_SNDHWM = 128                 # replies queued per control client
CONTROL_RCVHWM = 128                 # requests queued per control client before the broker reads them
MAX_IN_FLIGHT = 64                   # requests per control client being executed at once (the bridge is one client)
MAX_LOG_COUNT = 5_000                # `logs` count (a worker keeps 5,000 entries per plugin)
MAX_INVOKE_RESPONSE_BYTES = (MAX_REPLY_BYTES - 4096) // 4 * 3   # so that base64 + the reply's envelope fit
EVENTS_SNDHWM = 10_000               # broker XPUB send high-water mark, per subscriber (messages)
MAX_EVENT_BYTES = 16 << 10           # a worker's event payload over this is not published (a log event says so)
MAX_LOG_MESSAGE = 4_096              # characters of one log line or lastError; longer ones are cut (and say so)
PLUGIN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUBSCRIBER_RCVHWM = 200_000          # what our own subscribers set (their memory: they absorb bursts)

# --------------------------------------------------------------------------------------------------------------
# Event topics (Omniview's names, exactly)
STATUS = "plugin/devserver/status"
LOG = "plugin/devserver/log"
ERROR = "plugin/devserver/error"
RELOAD_START = "plugin/dev_reload_start"
RELOAD_COMPLETE = "plugin/dev_reload_complete"
RELOAD_ERROR = "plugin/dev_reload_error"
# Legacy reload payloads, as Omniview emits them: start and complete carry the plugin's PluginMeta (plugin.yaml, see
# omnibroker.pluginmeta), error carries the pair [PluginMeta, "error text"].
TOPICS = (STATUS, LOG, ERROR, RELOAD_START, RELOAD_COMPLETE, RELOAD_ERROR)
CONFIG = "omni/config"      # ours: omni.toml's problems changed, payload {"path", "error"}, meta pluginID ""

# Omniview's DevProcessStatus values. Vite: idle -> starting -> ready (answers HTTP; viteURL only then) | error |
# stopped. Go, managed: idle -> starting/building -> ready (built, loaded, gRPC up) | error | stopped. Go, external:
# running (attached to the developer's process) | error (its .devinfo is unusable) | stopped (it exited).
DevProcessStatus = Literal["idle", "starting", "building", "running", "ready", "error", "stopped"]
Severity = Literal["error", "warning"]
Mode = Literal["idle", "managed", "external"]
LogSource = Literal["vite", "go-build", "go-watch", "manager", "plugin"]
LogLevel = Literal["debug", "info", "warn", "error"]
# The worker process as the broker sees it (extra field, not Omniview's): "exited" died (supervisord restarts it),
# "stopped" stopped by hand in supervisord (supervisorctl stop) until a `start` runs it again.
WorkerStatus = Literal["none", "starting", "up", "lost", "exited", "stopped"]


ZERO_TIME = "0001-01-01T00:00:00Z"     # Go's time.Time{} in RFC 3339: what Omniview sends before any build


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def valid_plugin_id(plugin: Any) -> bool:
    return isinstance(plugin, str) and bool(PLUGIN_ID_RE.match(plugin)) and ".." not in plugin


class DevServerState(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Payload of plugin/devserver/status; Omniview's JSON names, plus a few extras."""
    pluginID: str
    mode: Mode = "idle"
    devPath: str = ""
    vitePort: int = 0
    viteURL: str = ""
    viteStatus: DevProcessStatus = "idle"
    goStatus: DevProcessStatus = "idle"
    lastBuildDuration: int = 0          # nanoseconds, like Go's time.Duration
    lastBuildTime: str = ZERO_TIME      # RFC 3339; Go's zero time before any build, as Omniview sends
    lastError: str = ""
    grpcConnected: bool = False
    # extras
    workerStatus: WorkerStatus = "none"
    workerPid: int = 0
    pluginPid: int = 0
    buildQueued: bool = False
    restarts: int = 0
    registered: bool = True             # false in the last status of a removed plugin
    debugPort: int = 0                  # delve's port while the plugin runs under it (debug mode), else 0
    paused: bool = False                # debug mode: delve holds the plugin stopped (a breakpoint, a halt)
    pausedAt: str = ""                  # where it is stopped, "file.go:LINE" ("" when not paused)


class LogEntry(msgspec.Struct, kw_only=True):
    timestamp: str
    source: LogSource
    level: LogLevel
    message: str
    pluginID: str


class BuildError(msgspec.Struct, kw_only=True):
    """Omniview's DevBuildError: a position (0 = unknown) and a message; `severity` "warning" for diagnostics that do
    not fail the build (go vet's), "error" otherwise."""
    file: str = ""
    line: int = 0
    column: int = 0
    message: str
    severity: Severity = "error"


class ErrorPayload(msgspec.Struct, kw_only=True):
    pluginID: str
    errors: list[BuildError]


class EventMeta(msgspec.Struct, kw_only=True):
    epoch: str
    seq: int
    ts: float
    pluginID: str


class DevInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """The `.devinfo` file of Mode B (Omniview SDK format)."""
    pid: int
    protocol: str
    protocolVersion: int
    addr: str
    pluginId: str = ""                  # optional (omitempty in Omniview): the directory names the plugin
    vitePort: int = 0
    version: str = ""
    startedAt: str = ""


# --------------------------------------------------------------------------------------------------------------
# Control (REQ/REP)

class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str | int
    command: str
    properties: dict[str, Any] = {}


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str | int | None
    status: Literal["ok", "error"]
    time: float
    result: Any = None
    code: str = ""
    reason: str = ""


def ok_reply(req_id: Any, result: Any = None) -> Reply:
    return Reply(id=req_id, status="ok", time=time.time(), result=result if result is not None else {})


def error_reply(req_id: Any, code: str, reason: str) -> Reply:
    return Reply(id=req_id, status="error", time=time.time(), code=code, reason=reason)


_encoder = msgspec.json.Encoder()
encode = _encoder.encode
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)
_state_decoder = msgspec.json.Decoder(DevServerState)
_devinfo_decoder = msgspec.json.Decoder(DevInfo)
_meta_decoder = msgspec.json.Decoder(EventMeta)
decode_json = msgspec.json.decode


def decode_request(frames: list[bytes]) -> Request:
    """Parse one control request; raise CommandError(bad_request) with the reason in words. (Its size is bounded
    before it gets here: the control socket's ZMQ_MAXMSGSIZE is MAX_REQUEST_BYTES.)"""
    if len(frames) != 1:
        raise CommandError(ErrorCode.BAD_REQUEST, f"a request is exactly one frame, got {len(frames)}")
    body = frames[0]
    try:
        return _request_decoder.decode(body)
    except msgspec.ValidationError as e:
        raise CommandError(ErrorCode.BAD_REQUEST, f"invalid request: {e}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise CommandError(ErrorCode.BAD_REQUEST, f"request is not valid JSON: {e}") from None


def request_id_of(frames: list[bytes]) -> Any:
    """Best effort: the id of a request we could not validate, so its error reply still names it."""
    try:
        doc = msgspec.json.decode(frames[-1]) if frames and len(frames[-1]) <= MAX_REQUEST_BYTES else None
        rid = doc.get("id") if isinstance(doc, dict) else None
        return rid if isinstance(rid, (str, int)) else None
    except Exception:       # noqa: BLE001 - any garbage (bad UTF-8, deep nesting): no id, still an answer
        return None


def decode_reply(body: bytes) -> Reply:
    return _reply_decoder.decode(body)


def decode_state(body: bytes | str) -> DevServerState:
    return _state_decoder.decode(body)


def decode_devinfo(body: bytes) -> DevInfo:
    return _devinfo_decoder.decode(body)


def decode_meta(body: bytes) -> EventMeta:
    return _meta_decoder.decode(body)


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


# --------------------------------------------------------------------------------------------------------------
# Event frames

def event_frames(topic: str, payload: Any, meta: EventMeta) -> list[bytes]:
    return [topic.encode(), payload if isinstance(payload, bytes) else encode(payload), encode(meta)]


def clip(text: str, limit: int = MAX_LOG_MESSAGE) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters cut: lines are limited to {limit}]"


def log_payload(plugin: str, source: str, level: str, message: str) -> list[LogEntry]:
    return [LogEntry(timestamp=now_rfc3339(), source=source, level=level, message=message, pluginID=plugin)]


# --------------------------------------------------------------------------------------------------------------
# Worker link (internal): worker DEALER <-> broker ROUTER; frames [kind, body...]
#   worker -> broker:  REGISTER  {plugin, pid, state}
#                      EVENT     topic, payload            (broker stamps meta and publishes)
#                      REPLY     body (a control Reply)
#                      TOKEN     {op: acquire|release, id}  (broker-wide build slots)
#                      PORT      {id, taken}                (its Vite port was taken by another program)
#   broker -> worker:  WELCOME   {epoch, spec, desired}
#                      COMMAND   body (a control Request; properties may carry broker-made values)
#                      TOKEN     {op: granted, id}
#                      PORT      {id, port | error}         (the next free Vite port, now held for the plugin)
#   omnievents -> broker: PROCSTATE {name, state, pid}
#                      SUPERVISOR {state}           (supervisord itself: STOPPING, the start of its shutdown)
#   broker -> worker:  SUPERVISOR {state}           (STOPPING: stop the parts now; supervisord's TERM comes later)
#
# Liveness goes through files, not messages (locations.alive_path, locations.epoch_path): each worker touches its
# alive file every HEARTBEAT_INTERVAL and the broker's liveness pass stats the files of the workers it knows; the
# broker writes its epoch to a file at start, and a worker that finds a new one there registers again. A message
# costs the broker ~165 µs of CPU (asyncio wake-up, ZeroMQ's I/O thread and mailbox); a stat ~2 µs: with 100 workers
# the heartbeat messages alone kept the idle broker at ~2 % CPU (gunicorn's workers signal liveness the same way).

K_REGISTER = b"register"
K_EVENT = b"event"
K_REPLY = b"reply"
K_COMMAND = b"command"
K_WELCOME = b"welcome"
K_TOKEN = b"token"
K_PROCSTATE = b"procstate"    # from omnievents: supervisord PROCESS_STATE_* of our programs
K_PORT = b"port"              # worker -> broker: PortSwap{id, taken}; broker -> worker: PortSwap{id, port | error}
K_SUPERVISOR = b"supervisor"  # omnievents -> broker -> every worker: SupervisorState{state}

HEARTBEAT_INTERVAL = 1.0     # seconds between a worker's touches of its alive file
HEARTBEAT_LIVENESS = 2.5     # a worker silent this long is marked lost (with the 0.25 s check: within 3 s)


class Register(msgspec.Struct, kw_only=True):
    plugin: str
    pid: int
    state: DevServerState


class PluginSpec(msgspec.Struct, kw_only=True):
    """A registered plugin as the broker knows it; sent to its worker at registration."""
    id: str
    path: str
    settings: dict[str, Any] = {}


class Desired(msgspec.Struct, kw_only=True):
    """What the user asked for last; the broker restores it after any crash."""
    mode: Mode = "idle"
    vite: bool = True
    go: bool = True
    debug: bool = False             # the Go plugin runs under delve (managed mode)


class Welcome(msgspec.Struct, kw_only=True):
    epoch: str
    spec: PluginSpec
    desired: Desired
    vitePort: int = 0
    debugPort: int = 0                  # not 0: the Go plugin runs under delve on this port


class Forwarded(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The properties of a command the broker forwards to a worker (`Request.properties` on K_COMMAND): the client's
    properties as the command validated them, plus what the broker decided for it."""
    plugin: str
    vite: bool = True               # start
    go: bool = True                 # start
    vitePort: int = 0               # start, restart: the Vite port the broker holds for the plugin (0: none)
    debugPort: int = 0              # start, restart: the plugin's debug port: its Go plugin runs under delve (0: not)
    count: int = 200                # logs
    source: str | None = None       # logs
    method: str = ""                # invoke
    request: str = ""               # invoke: protobuf bytes, base64
    timeout: float = 10.0           # invoke: seconds


def decode_forwarded(properties: dict[str, Any]) -> Forwarded:
    return msgspec.convert(properties, Forwarded)


class Token(msgspec.Struct, kw_only=True):
    op: Literal["acquire", "release", "granted"]
    id: str


class PortSwap(msgspec.Struct, kw_only=True):
    """Another program took a port the broker gave this plugin (its Vite port, or its debug port): the worker asks
    for the next free one of the same range."""
    id: str
    kind: Literal["vite", "debug"] = "vite"
    taken: int = 0          # request: the port found in use
    port: int = 0           # answer: the new port (0 with `error` when none is free)
    error: str = ""


class ProcState(msgspec.Struct, kw_only=True):
    """A supervisord PROCESS_STATE_* event for one of our programs, as forwarded by omnievents."""
    name: str
    state: str            # RUNNING, EXITED, BACKOFF, FATAL, STARTING, STOPPING, STOPPED
    pid: int = 0
    expected: bool = True


class SupervisorState(msgspec.Struct, kw_only=True):
    """supervisord's own state (SUPERVISOR_STATE_CHANGE_*), as forwarded by omnievents and relayed by the broker to
    every worker. STOPPING: supervisord has begun to stop every program (shutdown or reload); it stops them one process
    group at a time, so each worker stops its parts on this notice, all at once, and exits at once on its TERM."""
    state: str            # STOPPING (the one state omnievents forwards)


_register_decoder = msgspec.json.Decoder(Register)
_procstate_decoder = msgspec.json.Decoder(ProcState)


def decode_procstate(body: bytes) -> ProcState:
    return _procstate_decoder.decode(body)


_supervisor_decoder = msgspec.json.Decoder(SupervisorState)


def decode_supervisor(body: bytes) -> SupervisorState:
    return _supervisor_decoder.decode(body)


_welcome_decoder = msgspec.json.Decoder(Welcome)
_token_decoder = msgspec.json.Decoder(Token)
_portswap_decoder = msgspec.json.Decoder(PortSwap)


def decode_portswap(body: bytes) -> PortSwap:
    return _portswap_decoder.decode(body)


def decode_register(body: bytes) -> Register:
    return _register_decoder.decode(body)


def decode_welcome(body: bytes) -> Welcome:
    return _welcome_decoder.decode(body)


def decode_token(body: bytes) -> Token:
    return _token_decoder.decode(body)
