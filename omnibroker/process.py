"""Process helpers every omni program uses: the parent-death signal, signalling a process group, words for a return
code, and watching a process we did not start (or did not reap) for its exit.

Here, in the base package, because the broker, the bridge and the worker all need them and the base package imports
nothing from the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Callable

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:     # pragma: no cover - not Linux
    _libc = None


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux), even when the parent is SIGKILLed."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def watch_children_with_pidfds() -> bool:
    """Make asyncio learn of its child processes' exits through pidfds in the loop (Linux >= 5.3) instead of a thread
    blocked in waitpid per child, Python 3.11's default: a worker's plugin, Vite and each `go build` cost a thread
    each, its stack and its thread state, for as long as they run. Python 3.12 does this by itself. Call it before
    `asyncio.run`; False where it does not apply."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    return True


def killpg(pgid: int, sig: int) -> bool:
    """Send `sig` to process group `pgid`; False when the group is gone or not ours (nothing to do then)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def rc_text(rc: int | None) -> str:
    """A return code in words: "status 1", "signal SIGTERM" (asyncio's negative codes), "?" when unknown."""
    if rc is None:
        return "?"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-rc).name}"
        return f"signal {-rc}"
    return f"status {rc}"


class PidWatch:
    """Calls `on_exit()` (in the loop) once when process `pid` exits. When `create_time` is not None (psutil's
    start time of the process meant), a pid that already names another process, or a zombie, counts as exited at once.

    pidfd + loop.add_reader where the kernel has it (Linux >= 5.3); otherwise a psutil wait in a thread, or, with
    `thread_fallback=False`, nothing (`method` stays "": the caller has other ways to learn of the death)."""

    def __init__(self, pid: int, create_time: float | None, on_exit: Callable[[], None], *,
                 thread_fallback: bool = True):
        self.pid = pid
        self.create_time = create_time
        self._on_exit = on_exit
        self._thread_fallback = thread_fallback
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
        elif self._thread_fallback:
            self.method = "thread"
            threading.Thread(target=self._wait_thread, name=f"pidwatch-{self.pid}", daemon=True).start()
        else:
            return
        if self.create_time is None:
            return
        # The pidfd (or the thread) now follows whichever process has this pid: make sure it is the one meant.
        import psutil
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
                self._loop.call_soon(self._fire)
        except psutil.Error:
            self._loop.call_soon(self._fire)

    def _wait_thread(self) -> None:
        import psutil
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
        """Stop watching (idempotent); `on_exit` is not called after this."""
        self._stop.set()
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
