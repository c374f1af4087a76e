"""The one way a worker runs a child process (Vite, go build, the plugin binary).

Every child:
- runs in its own process group (so a stop reaches node's or go's own children too);
- gets PR_SET_PDEATHSIG=SIGKILL, so it dies when the worker dies, even by SIGKILL;
- is recorded in `<runtime>/children/<plugin>.json` (pid, pgid, create time), so whatever survived a worker crash
  (a grandchild that did not get the death signal) is killed at the worker's next start;
- carries `OMNI_CHILD=<runtime dir>|<plugin>|<token>` in its environment, inherited by all its descendants, even
  those that leave its process group and session (`setsid`): when the child ends (stopped or not), every process of
  this user still carrying its token is killed, and the worker's start and exit kill every process carrying
  `<runtime dir>|<plugin>|` (escapees a SIGKILLed worker left behind, reparented to init). Nothing else is touched:
  another service has another runtime dir, another user's processes are skipped. (A descendant that empties its
  environment is not found this way.)
- has its stdout/stderr read line by line and handed to a callback (log events, handshake parsing); once it has
  exited, what its pipes still hold is read for at most PIPE_DRAIN s (a descendant may keep them open);
- stops with TERM to the group, a grace period, then KILL to the group.

The worker is a child subreaper (PR_SET_CHILD_SUBREAPER): descendants orphaned by our children are reparented to it,
not to init; `reap_adopted()` collects those that died (asyncio only waits for the children it started).
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import shutil
import signal
import time
import uuid
from collections import deque
from typing import Callable, Sequence

import psutil

from omnibroker import protocol
from omnibroker.process import killpg, set_pdeathsig

LineHandler = Callable[[str, str], None]        # (stream "stdout"|"stderr", line without newline)
MAX_LINE = 64 * 1024
MARK = "OMNI_CHILD"
PIPE_DRAIN = 1.0            # s to read a finished child's pipes when a descendant keeps them open
KILL_WAIT = 2.0             # s to wait for killed escapees to die

_PR_SET_CHILD_SUBREAPER = 36
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_own: set[int] = set()      # pids of live Child processes (asyncio reaps them, reap_adopted() must not)
_spawning = 0               # spawns under way (their pid is not in _own yet)
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:     # pragma: no cover - not Linux
    _libc = None


def set_child_subreaper() -> None:
    """Orphaned descendants of this process are reparented to it rather than to init (Linux)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def marked(prefix: str) -> list[int]:
    """Live processes of this user (not this one) whose environment has OMNI_CHILD starting with `prefix`."""
    want = f"{MARK}={prefix}".encode()
    inside = b"\0" + want
    me, uid = os.getpid(), os.getuid()
    found = []
    # kill_escapees walks /proc twice after every child's exit, with 100-200 processes on a developer's machine:
    # bare os.open/os.read, and the owner looked at only for a match.
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/environ", os.O_RDONLY)
        except OSError:
            continue
        try:
            environ = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
        except OSError:
            continue
        finally:
            os.close(fd)
        if not (environ.startswith(want) or inside in environ) or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == uid:
                found.append(int(name))
        except OSError:
            pass
    return found


def kill_marked(prefix: str) -> list[int]:
    """SIGKILL every process `marked(prefix)` finds (through pidfds: a pid reused meanwhile is not hit)."""
    killed = []
    for pid in marked(prefix):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
        finally:
            os.close(fd)
    return killed


async def kill_escapees(prefix: str) -> list[int]:
    """kill_marked, then wait (at most KILL_WAIT s) until they are gone and reap those adopted by this process.

    The scan is made twice: a process in the middle of an exec (a `setsid sleep` becoming `sleep`) shows an empty
    environment for a moment, so one scan can miss it; the second comes after the first has walked all of /proc."""
    killed: list[int] = []
    deadline = time.monotonic() + KILL_WAIT
    for _ in range(2):
        found = kill_marked(prefix)
        while found and time.monotonic() < deadline and any(_alive(pid) for pid in found):
            await asyncio.sleep(0.01)   # a SIGKILLed process dies within ms; no event to wait on for non-children
        killed += [pid for pid in found if pid not in killed]
    reap_adopted()
    return killed


def _alive(pid: int) -> bool:
    """Running (not yet a zombie) and not reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of group `pgid`, their reaped children's included."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command: state ppid pgrp session ... then utime stime cutime cstime at [11:15]
        if len(fields) > 14 and int(fields[2]) == pgid:
            total += sum(int(v) for v in fields[11:15])
    return total / _CLK_TCK


def reap_adopted() -> list[int]:
    """Collect the exit status of dead processes adopted by this (subreaper) process; never one asyncio waits for."""
    if _spawning:
        return []
    reaped = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            if pid in _own or _alive(pid):
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                pass
    return reaped


def _child_preexec() -> None:
    set_pdeathsig(signal.SIGKILL)


# util-linux's setpriv sets the death signal and execs the command. Without a preexec_fn Python spawns with vfork,
# which does not copy the worker's memory (a preexec_fn costs a full fork: ~10 ms of a blocked loop per child).
_SETPRIV = shutil.which("setpriv")


def death_signal_argv(argv: Sequence[str]) -> tuple[list[str], Callable[[], None] | None]:
    """argv and preexec_fn that make a child die by SIGKILL when this process dies."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return list(argv), _child_preexec


def _check_executable(exe: str, cwd: str | None, env: dict | None) -> None:
    """Raise what exec would (FileNotFoundError, PermissionError) before setpriv hides it in an exit code."""
    if os.sep in exe:
        path = os.path.join(cwd or ".", exe)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), exe)
    elif shutil.which(exe, path=(env if env is not None else os.environ).get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)


class ChildRegistry:
    """Pids of a worker's children on disk, so a restarted worker can kill what a crash left behind."""

    def __init__(self, plugin: str):
        self.path = os.path.join(protocol.runtime_dir(), "children", f"{plugin}.json")
        self.marker = f"{protocol.runtime_dir()}|{plugin}|"      # OMNI_CHILD prefix of this plugin's children
        self.entries: dict[int, dict] = {}

    def reap_leftovers(self) -> list[int]:
        """Kill process groups recorded by a previous worker incarnation (validated by create time), and every
        process carrying this plugin's mark. Returns the pgids and pids killed."""
        killed: list[int] = kill_marked(self.marker)
        try:
            with open(self.path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = []
        for entry in old if isinstance(old, list) else []:
            try:
                proc = psutil.Process(int(entry["pid"]))
                if abs(proc.create_time() - float(entry["created"])) > 0.05:
                    continue        # the pid was reused by someone else's process
            except (psutil.Error, KeyError, TypeError, ValueError):
                proc = None
            pgid = int(entry.get("pgid", 0) or 0)
            if pgid > 1:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                    killed.append(pgid)
                except OSError:
                    pass
            if proc is not None:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        self._write()
        return sorted(set(killed))

    def add(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self.entries[pid] = {"pid": pid, "pgid": pid, "created": created}
        self._write()

    def remove(self, pid: int) -> None:
        if self.entries.pop(pid, None) is not None:
            self._write()

    def _write(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(list(self.entries.values()), f)
        os.replace(tmp, self.path)


class Child:
    """One running child process. Create with `await Child.spawn(...)`."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, registry: ChildRegistry | None,
                 on_line: LineHandler | None, tail: int, mark: str):
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.mark = mark
        self.started = time.monotonic()
        self._registry = registry
        self._on_line = on_line
        self.tail: deque[str] = deque(maxlen=tail)     # last lines of stderr+stdout, for error messages
        self._readers = [asyncio.create_task(self._pump(proc.stdout, "stdout")),
                         asyncio.create_task(self._pump(proc.stderr, "stderr"))]
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:
            self._pidfd = -1            # already reaped, or no pidfd support: proc.wait() alone tells the exit
        self._done = asyncio.create_task(self._wait())

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], *, cwd: str | None = None, env: dict | None = None,
                    on_line: LineHandler | None = None, registry: ChildRegistry | None = None,
                    tail: int = 50) -> "Child":
        global _spawning
        _check_executable(argv[0], cwd, env)
        full_argv, preexec = death_signal_argv(argv)
        env = dict(os.environ if env is None else env)
        mark = f"{registry.marker if registry is not None else protocol.runtime_dir() + '||'}{uuid.uuid4().hex}"
        env[MARK] = mark
        _spawning += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *full_argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, preexec_fn=preexec, limit=MAX_LINE)
            _own.add(proc.pid)
        finally:
            _spawning -= 1
        if registry is not None:
            registry.add(proc.pid)
        return cls(name, proc, registry, on_line, tail, mark)

    async def _pump(self, stream: asyncio.StreamReader | None, which: str) -> None:
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:          # a line longer than MAX_LINE: take what is buffered, go on
                raw = await stream.read(MAX_LINE)
            except (ConnectionError, OSError):
                return
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail.append(line)
            if self._on_line is not None:
                try:
                    self._on_line(which, line)
                except Exception:       # a handler bug must not stop the pump (and block the child on a pipe)
                    pass

    async def _exit(self) -> None:
        """Until the process has exited. (asyncio's proc.wait() also waits until its pipes are closed, which a
        descendant holding them delays for ever: the pidfd says when the process itself ended.)"""
        if self._pidfd < 0:
            return
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(self._pidfd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def _wait(self) -> int:
        await self._exit()
        # Its descendants do not outlive it: its process group, and those that left the group (setsid).
        self.signal_group(signal.SIGKILL)
        await kill_escapees(self.mark)
        # Drain what the child wrote before exiting, so callers see its last words; a descendant without our mark
        # may still hold the pipes: stop reading them after PIPE_DRAIN s.
        _, late = await asyncio.wait(self._readers, timeout=PIPE_DRAIN)
        for fd in (1, 2) if late else ():
            pipe = self.proc._transport.get_pipe_transport(fd)  # asyncio's Process has no public way to its pipes
            if pipe is not None:
                pipe.close()                    # then proc.wait() returns with the exit code
        rc = await self.proc.wait()
        _own.discard(self.pid)
        if self._registry is not None:
            self._registry.remove(self.pid)
        return rc

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def signal_group(self, sig: int) -> None:
        killpg(self.pid, sig)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the processes of the child's group that are alive now, with the
        children each of them has reaped (go build's finished compile steps count in go's own)."""
        return group_cpu_seconds(self.pid)

    async def stop(self, grace: float = 5.0) -> int:
        """TERM to the group, wait `grace` seconds, then KILL the group. Returns the exit code."""
        if self.running:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._done), grace)
            except asyncio.TimeoutError:
                pass
        # Kill the whole group even when the leader is gone: its own children may still be there.
        self.signal_group(signal.SIGKILL)
        return await self.wait()

    async def kill(self) -> int:
        return await self.stop(grace=0)

    def tail_text(self, n: int = 20) -> str:
        return "\n".join(list(self.tail)[-n:])
