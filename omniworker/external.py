"""External mode (Mode B): follow `<home>/plugins/<id>/.devinfo` and reattach to a plugin process we do not own.

- the plugin's directory is watched (watchdog/inotify): creation, modification, chmod, atomic rename onto `.devinfo`,
  deletion, and a file that is already there when `attach()` is called;
- every `.devinfo` is validated strictly before anything touches the network (`validate_devinfo`); each failure is a
  `DevInfoError` with its own code, reported as an error event (file = the `.devinfo` path), a log line and
  `lastError`, and the plugin stays detached;
- a valid file is reattached: gRPC through `omniworker.goplugin.PluginHost.connect` (no process ownership: it is never
  killed, not on `detach`, not when the worker stops or crashes), health check `plugin`;
- death is noticed through a pidfd registered with the event loop (fallback: a psutil wait in a thread) and through
  the gRPC channel's state, well under 500 ms; the `.devinfo` is removed only if it still names the dead pid;
- a periodic health check (`[plugins.<id>.external] health_interval`, 5 s) catches a process that is alive but hung,
  re-probes Vite, and re-reads the file if an inotify event was missed;
- a `.devinfo` replaced with another pid/addr (a live-reload tool restarting the plugin) is followed: the old
  connection is closed, the new one made, a status event and `plugin/dev_reload_complete` published.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import ipaddress
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
import psutil

from omnibroker import protocol
from omnibroker.protocol import BuildError, CommandError, DevInfo, ErrorCode

from . import procsock
from .context import PluginContext
from .filewatch import FileWatch
from .runtime import Background, PluginSlot, unless_closed
from .state import ExternalStatus as S
from .vite import http_answers

DEVINFO_NAME = ".devinfo"
MAX_DEVINFO_BYTES = 64 * 1024
SUPPORTED_PROTOCOL_VERSIONS = frozenset({1})
DEFAULT_PID_START_SLACK = 1.0           # seconds a pid's start time may exceed the file's mtime (clock granularity)
MAX_PID = 2**31 - 1


# ------------------------------------------------------------------------------------------------------------------
# Validation errors: one code per failure, a sentence for people.

class Code:
    MISSING = "devinfo_missing"                 # no file: not an error event, just "nothing to attach to"
    UNREADABLE = "devinfo_unreadable"
    SYMLINK = "devinfo_symlink"
    NOT_REGULAR = "devinfo_not_regular"
    TOO_LARGE = "devinfo_too_large"
    OWNER = "devinfo_owner"
    PERMISSIONS = "devinfo_permissions"
    JSON = "devinfo_json"
    SHAPE = "devinfo_shape"
    PLUGIN_ID = "devinfo_plugin_id"
    PROTOCOL = "devinfo_protocol"
    PROTOCOL_VERSION = "devinfo_protocol_version"
    PID_INVALID = "devinfo_pid_invalid"
    PID_DEAD = "devinfo_pid_dead"
    PID_REUSED = "devinfo_pid_reused"
    PID_FOREIGN = "devinfo_pid_foreign"
    PID_NOT_LISTENING = "devinfo_pid_not_listening"     # the pid does not hold the socket listening at addr
    ADDR_INVALID = "devinfo_addr_invalid"
    ADDR_NOT_LOOPBACK = "devinfo_addr_not_loopback"
    SOCKET = "devinfo_socket"
    # after validation
    CONNECT = "external_connect"                # the gRPC connection or the first health check failed
    UNHEALTHY = "external_unhealthy"            # connected before, process alive, health check failing


class DevInfoError(Exception):
    """A `.devinfo` that must not be attached to. `str(e)` is "<code>: <sentence>"."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.key: tuple | None = None       # identity of the file version refused, when it was read


class DevInfoMissing(DevInfoError):
    def __init__(self, path: str):
        super().__init__(Code.MISSING, f"{path} does not exist")


@dataclass(frozen=True)
class ValidDevInfo:
    """A `.devinfo` that passed every check, with what the checks found out."""
    info: DevInfo
    network: str                # "tcp" | "unix"
    address: str                # "127.0.0.1:port", "[::1]:port" or an absolute socket path
    create_time: float          # the pid's start time (psutil), to detect reuse later
    key: tuple                  # (st_dev, st_ino, st_mtime_ns, st_size) of the file read

    def same_process(self, other: "ValidDevInfo") -> bool:
        return (self.info.pid == other.info.pid and abs(self.create_time - other.create_time) < 1e-3
                and self.network == other.network and self.address == other.address)


def file_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def read_devinfo_file(path: str, uid: int | None = None) -> tuple[bytes, os.stat_result]:
    """The bytes of `path` if it is a regular file (not a symlink) of at most 64 KiB, owned by `uid` (default: ours)
    and not writable by group or others. Sizes are checked with lstat/fstat before reading; the open uses O_NOFOLLOW
    and O_NONBLOCK (a FIFO swapped in between cannot block us)."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise DevInfoMissing(path) from None
    except OSError as e:
        raise DevInfoError(Code.UNREADABLE, f"cannot stat {path}: {e.strerror or e}") from None
    _check_stat(path, st, uid)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DevInfoMissing(path) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DevInfoError(Code.SYMLINK, f"{path} is a symbolic link; .devinfo must be a regular file") from None
        raise DevInfoError(Code.UNREADABLE, f"cannot open {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        _check_stat(path, st, uid)         # the file we opened, not the one we looked at
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_DEVINFO_BYTES:
            chunk = os.read(fd, MAX_DEVINFO_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_DEVINFO_BYTES:
            raise DevInfoError(Code.TOO_LARGE, f"{path} grew past {MAX_DEVINFO_BYTES} bytes while being read")
        return b"".join(chunks), st
    except OSError as e:
        raise DevInfoError(Code.UNREADABLE, f"cannot read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _check_stat(path: str, st: os.stat_result, uid: int) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise DevInfoError(Code.SYMLINK, f"{path} is a symbolic link; .devinfo must be a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise DevInfoError(Code.NOT_REGULAR, f"{path} is not a regular file")
    if st.st_size > MAX_DEVINFO_BYTES:
        raise DevInfoError(Code.TOO_LARGE,
                           f"{path} is {st.st_size} bytes; a .devinfo may be at most {MAX_DEVINFO_BYTES} bytes")
    if st.st_uid != uid:
        raise DevInfoError(Code.OWNER, f"{path} is owned by uid {st.st_uid}, not by us (uid {uid})")
    if st.st_mode & 0o022:
        raise DevInfoError(Code.PERMISSIONS, f"{path} is writable by {'others' if st.st_mode & 0o002 else 'its group'}"
                           f" (mode {stat.S_IMODE(st.st_mode):04o}); it must be writable by its owner only")


def parse_devinfo(data: bytes, plugin_id: str) -> DevInfo:
    """JSON and shape checks that need nothing but the bytes (no file system, no processes, no network).
    Raises only DevInfoError."""
    try:
        info = protocol.decode_devinfo(data)
    except msgspec.ValidationError as e:
        raise DevInfoError(Code.SHAPE, f".devinfo does not have the expected shape: {e}") from None
    except (msgspec.DecodeError, RecursionError, UnicodeError, ValueError) as e:
        raise DevInfoError(Code.JSON, f".devinfo is not valid JSON: {e}") from None
    if info.pluginId and info.pluginId != plugin_id:
        raise DevInfoError(Code.PLUGIN_ID, f".devinfo names plugin {info.pluginId!r} but lives in the directory of "
                           f"{plugin_id!r}")
    if info.protocol != "grpc":
        raise DevInfoError(Code.PROTOCOL, f".devinfo protocol is {info.protocol!r}; only \"grpc\" is supported")
    if info.protocolVersion not in SUPPORTED_PROTOCOL_VERSIONS:
        raise DevInfoError(Code.PROTOCOL_VERSION, f".devinfo protocolVersion is {info.protocolVersion}; supported: "
                           f"{', '.join(map(str, sorted(SUPPORTED_PROTOCOL_VERSIONS)))}")
    if not 0 < info.pid <= MAX_PID:
        raise DevInfoError(Code.PID_INVALID, f".devinfo pid {info.pid} is not a valid process id")
    if not 0 <= info.vitePort <= 65535:
        raise DevInfoError(Code.SHAPE, f".devinfo vitePort {info.vitePort} is not a port number (0 = none)")
    parse_addr(info.addr)
    return info


def parse_addr(addr: str) -> tuple[str, str]:
    """("unix", absolute path) or ("tcp", "host:port") with a loopback literal host. Never resolves a name: only
    "localhost" is accepted by name (and mapped to 127.0.0.1)."""
    if not addr or "\x00" in addr or len(addr) > 4096:
        raise DevInfoError(Code.ADDR_INVALID, f".devinfo addr {addr[:80]!r} is empty or malformed")
    if addr.startswith("unix:"):
        addr = addr[5:]
        if addr.startswith("//"):
            addr = addr[2:]
        if not addr.startswith("/"):
            raise DevInfoError(Code.ADDR_INVALID, f".devinfo addr unix:{addr[:80]} is not an absolute socket path")
    if addr.startswith("/"):
        return "unix", addr
    host, sep, port_s = addr.rpartition(":")
    if not sep or not host:
        raise DevInfoError(Code.ADDR_INVALID, f".devinfo addr {addr[:80]!r} is neither host:port nor a socket path")
    if not (port_s.isascii() and port_s.isdigit()) or not 0 < int(port_s) <= 65535:
        raise DevInfoError(Code.ADDR_INVALID, f".devinfo addr {addr[:80]!r} has no valid port")
    port = int(port_s)
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if bare.lower() == "localhost" and not bracketed:
        return "tcp", f"127.0.0.1:{port}"
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        raise DevInfoError(Code.ADDR_NOT_LOOPBACK, f".devinfo addr host {host[:80]!r} is not a loopback address; "
                           "only 127.0.0.0/8, ::1 and localhost are accepted (names are never resolved)") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_loopback:
        raise DevInfoError(Code.ADDR_NOT_LOOPBACK, f".devinfo addr {host[:80]}:{port} is not on loopback; only "
                           "127.0.0.0/8, ::1 and localhost are accepted")
    if isinstance(ip, ipaddress.IPv6Address):
        if ":" in host and not bracketed:
            raise DevInfoError(Code.ADDR_INVALID, f".devinfo addr {addr[:80]!r}: write IPv6 as [::1]:port")
        return "tcp", f"[{ip.compressed}]:{port}"
    return "tcp", f"{ip}:{port}"


def check_socket(path: str, uid: int | None = None) -> None:
    """A unix socket path must exist, be a socket (not a symlink) and be owned by `uid` (default: ours)."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except OSError as e:
        raise DevInfoError(Code.SOCKET, f".devinfo addr {path} cannot be used: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise DevInfoError(Code.SOCKET, f".devinfo addr {path} is not a unix socket")
    if st.st_uid != uid:
        raise DevInfoError(Code.SOCKET, f".devinfo addr {path} is a socket owned by uid {st.st_uid}, not by us "
                           f"(uid {uid})")


def check_process(pid: int, written_at: float, slack: float = DEFAULT_PID_START_SLACK,
                  uid: int | None = None) -> float:
    """The pid must be a live process of ours that started before the file was written (plus `slack` seconds of
    clock granularity): a pid reused by a newer process is refused. Returns its start time."""
    uid = os.getuid() if uid is None else uid
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            created = proc.create_time()
            status = proc.status()
            owner = proc.uids().real
    except psutil.NoSuchProcess:
        raise DevInfoError(Code.PID_DEAD, f"process {pid} named by .devinfo is not running (a stale file?)") from None
    except psutil.AccessDenied:
        raise DevInfoError(Code.PID_FOREIGN, f"process {pid} named by .devinfo cannot be inspected (not ours)") from None
    except psutil.Error as e:
        raise DevInfoError(Code.PID_DEAD, f"process {pid} named by .devinfo cannot be inspected: {e}") from None
    if status == psutil.STATUS_ZOMBIE:
        raise DevInfoError(Code.PID_DEAD, f"process {pid} named by .devinfo has exited (zombie)")
    if owner != uid:
        raise DevInfoError(Code.PID_FOREIGN, f"process {pid} named by .devinfo belongs to uid {owner}, not to us "
                           f"(uid {uid})")
    written = min(written_at, time.time())
    if created > written + slack:
        raise DevInfoError(Code.PID_REUSED, f"process {pid} started {created - written:.1f}s after .devinfo was "
                           "written: the pid was reused by another process (a stale file?)")
    return created


def check_owns_socket(pid: int, network: str, address: str) -> None:
    """The pid must hold the socket listening at `address` (one of /proc/<pid>/fd is it): a live but unrelated pid
    (1, a shell, a pid reused since) is refused before anything is dialled."""
    inodes = procsock.listening_inodes(network, address)
    if not inodes:
        raise DevInfoError(Code.PID_NOT_LISTENING, f"nothing listens at .devinfo addr {address} ({network})")
    try:
        if procsock.holds_any(pid, inodes):
            return
    except OSError as e:
        raise DevInfoError(Code.PID_NOT_LISTENING, f"the open files of process {pid} named by .devinfo cannot be "
                           f"read: {e.strerror or e}") from None
    raise DevInfoError(Code.PID_NOT_LISTENING, f"process {pid} named by .devinfo does not hold the socket listening at "
                       f"{address}: the file names an unrelated process (or a stale pid)")


def validate_devinfo(path: str, plugin_id: str, *, slack: float = DEFAULT_PID_START_SLACK,
                     uid: int | None = None) -> ValidDevInfo:
    """Every check of protocol.md, cheapest first; raises DevInfoError (DevInfoMissing when there is no file)."""
    data, st = read_devinfo_file(path, uid)
    try:
        info = parse_devinfo(data, plugin_id)
        network, address = parse_addr(info.addr)
        created = check_process(info.pid, st.st_mtime, slack, uid)
        if network == "unix":
            check_socket(address, uid)
        check_owns_socket(info.pid, network, address)
    except DevInfoError as e:
        e.key = file_key(st)
        raise
    return ValidDevInfo(info=info, network=network, address=address, create_time=created, key=file_key(st))


# ------------------------------------------------------------------------------------------------------------------
# Death of a process we do not own

class PidWatch:
    """Calls `on_exit()` (in the loop) once when process `pid` (started at `create_time`) exits.
    pidfd + loop.add_reader where the kernel has it (Linux >= 5.3); else a psutil wait in a thread."""

    def __init__(self, pid: int, create_time: float, on_exit: Callable[[], None]):
        self.pid = pid
        self.create_time = create_time
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._stop = threading.Event()
        self._fired = False
        self.method = ""

    def start(self) -> None:
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._loop.call_soon(self._fire)
            return
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            self._fd = fd
            self.method = "pidfd"
            self._loop.add_reader(fd, self._fire)
        else:
            self.method = "thread"
            threading.Thread(target=self._wait_thread, name=f"pidwatch-{self.pid}", daemon=True).start()
        # The pidfd (or the thread) now follows whichever process has this pid: make sure it is the one validated.
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                self._loop.call_soon(self._fire)
        except psutil.Error:
            self._loop.call_soon(self._fire)

    def _wait_thread(self) -> None:
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            proc = None
        while proc is not None and not self._stop.is_set():
            try:
                proc.wait(timeout=0.1)
                break
            except psutil.TimeoutExpired:
                try:
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.Error:
                    break
            except psutil.Error:
                break
        if not self._stop.is_set():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        if self._fired or self._stop.is_set():
            return
        self._fired = True
        self.stop()
        self._on_exit()

    def stop(self) -> None:
        self._stop.set()
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------------------------------------------------------

def _pid_running(pid: int) -> bool:
    """Alive and not a zombie (a killed child of someone who has not reaped it yet is dead to us)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _default_host_factory(ctx: PluginContext) -> Any:
    from .goplugin import PluginHost
    return PluginHost(ctx, name="external")


@dataclass
class _Conn:
    valid: ValidDevInfo
    host: Any
    watch: PidWatch | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.valid.info.pid

    def invoke(self, method: str, request: bytes, timeout: float):
        return self.host.invoke(method, request, timeout)


class External:
    """Mode B for one plugin. Lifecycle: `await attach()` … `await detach()`; `await invoke(...)`; `info()`.

    Its state is `ctx.external` (state.ExternalStatus): IDLE (attached, nothing valid seen yet; detached) ->
    CONNECTED (a valid file, a connection, a health answer) -> UNHEALTHY (alive, no health answer) -> CONNECTED; a file
    naming another process: CONNECTED -> CONNECTING -> CONNECTED; a wrong file or a refused connection: INVALID; the
    process exited or its file was removed: GONE."""

    def __init__(self, ctx: PluginContext, host_factory: Callable[[PluginContext], Any] | None = None):
        self.ctx = ctx
        self.part = ctx.external
        self.path = os.path.join(ctx.home, DEVINFO_NAME)
        self._host_factory = host_factory or _default_host_factory
        self.health_interval = ctx.settings.external.health_interval
        self.connect_timeout = ctx.settings.external.connect_timeout
        self.pid_start_slack = ctx.settings.external.pid_start_slack
        self.attached = False
        self.connect_attempts = 0           # PluginHost.connect calls made (tests: "no connection attempted")
        self._valid: ValidDevInfo | None = None
        self.slot = PluginSlot(f"external plugin {ctx.id}", coming=self._coming, usable=self._serving,
                               why=lambda last: self.ctx.state.lastError or last or f"no valid {self.path}",
                               none_came=ErrorCode.NOT_RUNNING)
        self._ever_connected = False
        self._watch = FileWatch(self.path, ctx.settings.external.debounce, self._mark_dirty,
                                lambda level, message: self.ctx.log("manager", level, message))
        self._main_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._file_dirty = False
        self._health_due = False
        self._reported: tuple | None = None     # (code, file key) of the last error reported, to report it once
        self._seen_key: tuple | None = None     # identity of the file as last read (None: none)
        self._background = Background()

    # --- public API ----------------------------------------------------------------------------------------------
    async def attach(self) -> None:
        """Start following `.devinfo` (idempotent). Returns once an existing file has been handled."""
        if self.attached:
            return
        self.attached = True
        self._ever_connected = False
        self._reported = None
        os.makedirs(self.ctx.home, mode=0o700, exist_ok=True)
        if self._host_factory is _default_host_factory:
            # grpc's import costs a few hundred ms: pay it now, off the loop, not when the plugin shows up
            await asyncio.to_thread(importlib.import_module, "omniworker.goplugin")
        self.part.change_state(S.IDLE, pluginPid=0)
        self.ctx.log("manager", "info", f"external mode: following {self.path}")
        await self._watch.start()
        await self._sync_file()
        if self._valid is None and self._reported is None:
            self._explain_missing()
        self._main_task = asyncio.create_task(self._main(), name=f"external-{self.ctx.id}")

    async def detach(self) -> None:
        """Stop following `.devinfo` and drop the connection. The external process keeps running."""
        if not self.attached:
            return
        self.attached = False
        if self._main_task is not None:
            self._main_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main_task
            self._main_task = None
        await self._watch.stop()
        await self._disconnect()
        self._background.cancel()
        self._valid = None
        self._seen_key = None
        self.part.change_state(S.IDLE, pluginPid=0, **self._vite_fields(None))
        self.ctx.log("manager", "info", "external mode: detached (the plugin process was left running)")

    async def invoke(self, method: str, request: bytes, timeout: float = 10.0) -> bytes:
        """A unary call (raw bytes) on the attached plugin. Waits, within `timeout`, for a connection when the plugin
        is being restarted; CommandError not_running / timeout / rpc_error otherwise."""
        if not self.attached:
            raise CommandError(ErrorCode.NOT_RUNNING, f"plugin {self.ctx.id} is not attached in external mode")
        return await self.slot.call(method, request, timeout)

    def _coming(self) -> bool:
        """A connection may come: attached, and a process was connected or a valid file names one."""
        return self.attached and (self._ever_connected or self._valid is not None)

    @property
    def _conn(self) -> _Conn | None:
        return self.slot.host

    def info(self) -> DevInfo | None:
        """The validated `.devinfo` being followed, or None."""
        return self._valid.info if self._valid is not None else None

    @property
    def connected(self) -> bool:
        return self._conn is not None and self.part.state is S.CONNECTED

    def _serving(self, conn: _Conn) -> bool:
        """`conn` is the current connection and answers health checks."""
        return conn is self._conn and self.part.state is S.CONNECTED

    # --- file changes (filewatch.FileWatch calls this, debounced) ------------------------------------------------
    def _mark_dirty(self) -> None:
        self._file_dirty = True
        self._wake.set()

    # --- the loop: file changes, health ticks ---------------------------------------------------------------------
    async def _main(self) -> None:
        next_tick = time.monotonic() + self.health_interval
        while self.attached:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                self._health_due = True
            self._wake.clear()
            try:
                if self._file_dirty:
                    self._file_dirty = False
                    await self._sync_file()
                if self._health_due or time.monotonic() >= next_tick:
                    self._health_due = False
                    next_tick = time.monotonic() + self.health_interval
                    await self._health()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling() or not self.attached:
                    raise
                # a stray CancelledError (not a cancellation of this task) must not end external mode
                self.ctx.log("manager", "warn", "external mode: an operation was cancelled under us; going on")
                self._file_dirty = True
                self._wake.set()
            except Exception as e:          # a bug here must not end external mode silently
                self.ctx.log("manager", "error", f"external mode: internal error: {type(e).__name__}: {e}")

    async def _sync_file(self) -> None:
        """Make the connection match what `.devinfo` says now."""
        try:
            valid = await asyncio.to_thread(validate_devinfo, self.path, self.ctx.id, slack=self.pid_start_slack)
        except DevInfoMissing:
            self._seen_key = None
            self._reported = None
            self._valid = None
            if self._conn is not None:
                self.ctx.log("manager", "info", f"{self.path} was removed: disconnecting from pid {self._conn.pid}")
                await self._disconnect()
                self.part.change_state(S.GONE, pluginPid=0, **self._vite_fields(None))
            return
        except DevInfoError as e:
            conn = self._conn
            if e.code == Code.PID_DEAD and conn is not None and not _pid_running(conn.pid):
                # The file still names the process we are connected to, and it just died: a file event raced the
                # pidfd. Take the death path (status, then remove the .devinfo that names the dead pid).
                self._on_exit(conn)
                return
            self._seen_key = e.key or self._current_key()
            self._valid = None
            self._report(e, self._seen_key)
            if self._conn is not None:
                self.ctx.log("manager", "warn", f"disconnecting from pid {self._conn.pid}: its .devinfo was replaced "
                             "by one that is not valid")
                await self._disconnect()
            # not connected, and why is in lastError: goStatus agrees, never "running" (Omniview ignores such a file
            # and keeps showing the old connection; omni follows the file): "stopped" when the file names a process
            # that is gone (a plugin that just exited), "error" when the file itself is wrong
            self.part.change_state(S.GONE if e.code == Code.PID_DEAD else S.INVALID, pluginPid=0,
                                   **self._vite_fields(None))
            return
        self._seen_key = valid.key
        self._valid = valid
        conn = self._conn
        if conn is not None and conn.valid.same_process(valid):
            conn.valid = valid
            vite = await self._vite_probe(valid.info.vitePort)
            if self._serving(conn):
                self.part.update(**vite)
            return
        restart = conn is not None
        if restart:
            self.ctx.log("manager", "info", f"{self.path} now names pid {valid.info.pid} at {valid.address}: "
                         f"following the restart (was pid {conn.pid})")
            self.ctx.reload_start()
            await self._disconnect()
            self.part.change_state(S.CONNECTING, pluginPid=0)
        await self._connect(valid)

    def _explain_missing(self) -> None:
        """No .devinfo at attach. When OMNIVIEW_HOME moves omni's home away from $HOME/.omniview, say that the
        Omniview SDK writes under $HOME/.omniview whatever OMNIVIEW_HOME says (and what does honour it)."""
        sdk_home = os.path.expanduser("~/.omniview")
        if os.path.realpath(self.ctx.home) == os.path.realpath(os.path.join(sdk_home, "plugins", self.ctx.id)):
            return
        sdk_file = os.path.join(sdk_home, "plugins", self.ctx.id, DEVINFO_NAME)
        message = (f"no {self.path} yet; note that the Omniview SDK's dev mode writes {sdk_file} ($HOME/.omniview, "
                   f"whatever OMNIVIEW_HOME says), which omni does not follow while OMNIVIEW_HOME is "
                   f"{os.environ.get('OMNIVIEW_HOME', '')!r}: run the plugin with `omnictl run-external "
                   f"{self.ctx.id} -- CMD`, which writes the file omni follows")
        self.ctx.log("manager", "warn", message)
        self.part.set_error(message)

    def _current_key(self) -> tuple | None:
        try:
            return file_key(os.lstat(self.path))
        except OSError:
            return None

    def _report(self, err: DevInfoError, key: tuple | None) -> None:
        """An error event, a log line and lastError — once per (code, file version)."""
        mark = (err.code, key)
        if mark == self._reported:
            return
        self._reported = mark
        message = str(err)
        self.ctx.errors([BuildError(file=self.path, message=message)])
        self.ctx.log("manager", "error", message)
        self.part.set_error(message)

    # --- connection ---------------------------------------------------------------------------------------------
    async def _connect(self, valid: ValidDevInfo) -> bool:
        info = valid.info
        self.connect_attempts += 1
        host = self._host_factory(self.ctx)
        self.ctx.log("manager", "info", f"attaching to pid {info.pid} at {valid.network}:{valid.address}")

        async def dial() -> bool:
            await unless_closed(host.connect(valid.network, valid.address, timeout=self.connect_timeout))
            return bool(await unless_closed(host.health(timeout=self.connect_timeout)))

        dial_task = asyncio.ensure_future(asyncio.wait_for(dial(), 2 * self.connect_timeout + 1))
        vite_task = asyncio.ensure_future(self._vite_probe(info.vitePort))
        try:
            ok = await dial_task
            err = None if ok else f"the plugin at {valid.address} does not pass the gRPC health check \"plugin\""
        except asyncio.CancelledError:
            vite_task.cancel()
            await self._close_host(host)
            raise
        except asyncio.TimeoutError:
            ok, err = False, f"no gRPC connection to {valid.address} within {self.connect_timeout:g}s"
        except Exception as e:
            ok, err = False, f"cannot connect to {valid.address}: {e}"
        vite = await vite_task
        if not ok or self._valid is not valid:
            await self._close_host(host)
            if err:
                self._report(DevInfoError(Code.CONNECT, f"pid {info.pid}: {err}"), valid.key)
                self.part.change_state(S.INVALID, pluginPid=0, **vite)
                if self._ever_connected:
                    self.ctx.reload_error(err)
            return False
        conn = _Conn(valid=valid, host=host)
        self.slot.set(conn)
        conn.watch = PidWatch(info.pid, valid.create_time, lambda: self._on_exit(conn))
        conn.watch.start()
        channel = getattr(host, "channel", None)
        if channel is not None and hasattr(channel, "wait_for_state_change"):
            conn.tasks.append(asyncio.create_task(self._watch_channel(conn, channel)))
        self._reported = None
        self.part.change_state(S.CONNECTED, pluginPid=info.pid, lastError="", **vite)
        self.ctx.log("manager", "info", f"attached to pid {info.pid} ({valid.network}:{valid.address}, watch: "
                     f"{conn.watch.method})")
        if self._ever_connected:
            self.ctx.reload_complete()
        self._ever_connected = True
        return True

    async def _disconnect(self) -> None:
        conn = self._conn
        self.slot.set(None)
        if conn is None:
            return
        if conn.watch is not None:
            conn.watch.stop()
        for task in conn.tasks:
            task.cancel()
        await self._close_host(conn.host)

    @staticmethod
    async def _close_host(host: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(host.close(), 5.0)

    def _on_exit(self, conn: _Conn) -> None:
        """The pidfd fired: publish at once, clean up afterwards."""
        if conn is not self._conn:
            return
        self.slot.set(None)
        pid = conn.pid
        message = f"external plugin process {pid} exited"
        self.part.change_state(S.GONE, pluginPid=0, lastError=message, **self._vite_fields(None))
        self.ctx.log("manager", "warn", message)
        self._background.spawn(self._after_exit(conn))

    async def _after_exit(self, conn: _Conn) -> None:
        for task in conn.tasks:
            task.cancel()
        await self._close_host(conn.host)
        removed = await asyncio.to_thread(self._remove_if_names, conn.pid)
        if removed:
            self.ctx.log("manager", "info", f"removed {self.path} (it named the dead pid {conn.pid})")
        if self._valid is not None and self._valid.info.pid == conn.pid:
            self._valid = None
        # Maybe the file already names a successor: look again.
        self._file_dirty = True
        self._wake.set()

    def _remove_if_names(self, pid: int) -> bool:
        """Remove `.devinfo` only if it still names `pid` (a successor may have replaced it already)."""
        try:
            data, st = read_devinfo_file(self.path)
            named = protocol.decode_devinfo(data).pid
        except (DevInfoError, msgspec.DecodeError):
            return False
        if named != pid:
            return False
        with contextlib.suppress(OSError):
            now = os.lstat(self.path)
            if file_key(now) == file_key(st):
                os.unlink(self.path)
                return True
        return False

    async def _watch_channel(self, conn: _Conn, channel: Any) -> None:
        """The gRPC channel leaving READY (peer closed the connection) triggers a health check now."""
        import grpc
        try:
            state = channel.get_state(False)
            while conn is self._conn:
                await channel.wait_for_state_change(state)
                state = channel.get_state(False)
                if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.IDLE,
                             grpc.ChannelConnectivity.SHUTDOWN) and conn is self._conn:
                    self._health_due = True
                    self._wake.set()
                if state == grpc.ChannelConnectivity.SHUTDOWN:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            return

    async def _health(self) -> None:
        """Periodic: health of a connected plugin, Vite, the directory watch, and a missed file change."""
        await self._watch.check()
        if self._current_key() != self._seen_key:
            await self._sync_file()
        conn = self._conn
        if conn is None:
            if self._valid is not None:         # valid file, failed connection: try again
                await self._sync_file()
            return
        timeout = max(0.5, min(self.health_interval, 3.0))
        try:
            ok = bool(await asyncio.wait_for(unless_closed(conn.host.health(timeout=timeout)), timeout + 1.0))
            why = "the health check \"plugin\" failed"
        except asyncio.TimeoutError:
            ok, why = False, f"no health answer within {timeout:g}s"
        except Exception as e:
            ok, why = False, f"health check error: {type(e).__name__}: {e}"
        if conn is not self._conn:
            return
        if ok and self.part.state is S.UNHEALTHY:
            self._reported = None
            self.ctx.log("manager", "info", f"pid {conn.pid} answers health checks again")
            self.part.change_state(S.CONNECTED, lastError="")        # UNHEALTHY -> CONNECTED
            self.slot.notify()
        elif not ok and self.part.state is S.CONNECTED:
            self._report(DevInfoError(Code.UNHEALTHY, f"pid {conn.pid} is running but not serving: {why} "
                                      "(hung?)"), conn.valid.key)
            self.part.change_state(S.UNHEALTHY)                      # CONNECTED -> UNHEALTHY
            self.slot.notify()
        vite = await self._vite_probe(conn.valid.info.vitePort)
        if conn is self._conn:
            self.part.update(**vite)

    # --- Vite (not ours either: just probed) --------------------------------------------------------------------
    async def _vite_probe(self, port: int) -> dict[str, Any]:
        if not port:
            return self._vite_fields(None)
        return self._vite_fields(port, await http_answers(port))

    @staticmethod
    def _vite_fields(port: int | None, answers: bool = False) -> dict[str, Any]:
        if not port:
            return dict(vitePort=0, viteStatus="idle")
        return dict(vitePort=port, viteStatus="ready" if answers else "stopped")
