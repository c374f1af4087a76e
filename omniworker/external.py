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
import importlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from omnibroker.process import PidWatch
from omnibroker.protocol import BuildError, CommandError, DevInfo, ErrorCode

from .context import PluginContext
from .devinfo import (DEVINFO_NAME, Code, DevInfoError, DevInfoMissing, ValidDevInfo, file_key, remove_if_names,
                      validate_devinfo)
from .filewatch import FileWatch
from .runtime import Background, PluginSlot, unless_closed
from .state import ExternalStatus as S
from .vite import http_answers


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
        return remove_if_names(self.path, pid)

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
