"""The one way a worker runs a child process (Vite, go build, the plugin binary).

Every child:
- runs in its own process group (so a stop reaches node's or go's own children too);
- gets PR_SET_PDEATHSIG=SIGKILL, so it dies when the worker dies, even by SIGKILL;
- is recorded in `<runtime>/children/<plugin>.json` (pid, pgid, create time), so whatever survived a worker crash
  (a grandchild that did not get the death signal) is killed at the worker's next start;
- has its stdout/stderr read line by line and handed to a callback (log events, handshake parsing);
- stops with TERM to the group, a grace period, then KILL to the group.
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
from collections import deque
from typing import Callable, Sequence

import psutil

from omnibroker import protocol

LineHandler = Callable[[str, str], None]        # (stream "stdout"|"stderr", line without newline)
MAX_LINE = 64 * 1024

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:     # pragma: no cover - not Linux
    _libc = None


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


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
        self.entries: dict[int, dict] = {}

    def reap_leftovers(self) -> list[int]:
        """Kill process groups recorded by a previous worker incarnation (validated by create time)."""
        killed: list[int] = []
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
        return killed

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
                 on_line: LineHandler | None, tail: int):
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.started = time.monotonic()
        self._registry = registry
        self._on_line = on_line
        self.tail: deque[str] = deque(maxlen=tail)     # last lines of stderr+stdout, for error messages
        self._readers = [asyncio.create_task(self._pump(proc.stdout, "stdout")),
                         asyncio.create_task(self._pump(proc.stderr, "stderr"))]
        self._done = asyncio.create_task(self._wait())

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], *, cwd: str | None = None, env: dict | None = None,
                    on_line: LineHandler | None = None, registry: ChildRegistry | None = None,
                    tail: int = 50) -> "Child":
        _check_executable(argv[0], cwd, env)
        full_argv, preexec = death_signal_argv(argv)
        proc = await asyncio.create_subprocess_exec(
            *full_argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=preexec, limit=MAX_LINE)
        if registry is not None:
            registry.add(proc.pid)
        return cls(name, proc, registry, on_line, tail)

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

    async def _wait(self) -> int:
        rc = await self.proc.wait()
        # Drain what the child wrote before exiting, so callers see its last words.
        await asyncio.gather(*self._readers, return_exceptions=True)
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
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

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
