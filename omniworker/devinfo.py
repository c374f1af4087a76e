""".devinfo: the file an external plugin (Mode B) publishes at `<home>/plugins/<id>/.devinfo` to say where it serves
gRPC. This module is its one owner: reading it safely, validating it (docs/protocol.md, ".devinfo (Mode B)"),
writing it (`omnictl run-external`) and removing it once the process it names is dead.

Every check of a file read raises `DevInfoError` with its own code (`Code`), cheapest checks first, and nothing here
touches the network: the follower (external.py) dials only a file that passed `validate_devinfo`.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import stat
import time
from dataclasses import dataclass

import msgspec
import psutil

from omnibroker import protocol
from omnibroker.files import write_atomic
from omnibroker.protocol import DevInfo

from . import procsock

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
# Writing and removing

def write_devinfo(path: str, info: DevInfo) -> None:
    """Atomically (temp file in the same directory + rename), mode 0600, its directory 0700."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomic(path, protocol.encode(info) + b"\n")


def remove_if_names(path: str, pid: int) -> bool:
    """Remove the `.devinfo` at `path` only if it still names `pid` (a successor may have replaced it already), and
    only the very file that was read (same inode, mtime and size). True when it was removed."""
    try:
        data, st = read_devinfo_file(path)
        named = protocol.decode_devinfo(data).pid
    except (DevInfoError, msgspec.DecodeError):
        return False
    if named != pid:
        return False
    with contextlib.suppress(OSError):
        if file_key(os.lstat(path)) == file_key(st):
            os.unlink(path)
            return True
    return False
