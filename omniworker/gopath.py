"""The managed Go path (Mode A's backend half): watch -> debounce -> build -> install -> reload the go-plugin.

`GoPath(ctx)` owns a GoWatcher, a Builder and the serving PluginHost. Choices (settings in `[plugins.<id>.go]`):
- `start()` (`build_on_start`): `"changed"` (the default) builds only when the build inputs changed since the
  installed binary was built. Every successful build + install writes `<home>/bin/plugin.stamp` (buildstamp.py) once
  the new binary is on disk (fsynced RETIRE_AFTER after the switch, off the save → ready path; `settled()` waits for
  it): a digest of the build argv, cwd and output, the Go-relevant env (GO*, CGO_*, CC, CXX, ...), the go tool
  binary's identity, and every file the watcher considers a source (same globs, ignores and pruned dirs) as (path,
  size, mtime_ns, ctime_ns, inode), snapshotted BEFORE the build ran; plus the installed binary's identity. At start,
  once the watcher runs (so later edits still trigger a build), if the stamp matches the current inputs and the
  installed binary is the stamped one, that binary is started without a build (one info line on "go-build"); if it
  fails to start, its stamp is removed and a normal build follows (no rollback to `plugin.prev`, older than the
  sources). The stamp does NOT cover GOPATH/vendor/module-cache packages outside the plugin dir, nor files outside
  `[go] watch` (embed, cgo): `omnictl rebuild <id>` always builds. gobuild's install() and rollback() remove the
  stamp; a missing or garbled stamp means "build". `"always"` builds at every start (an unchanged tree costs a no-op
  `go build`, ~0.2 CPU-second); `"missing"` builds only when no binary is installed at `<home>/bin/plugin`, even if it
  is older than the sources. If a start build fails but a binary is installed, the installed one is started anyway
  (goStatus "error", grpcConnected true): the old plugin keeps serving.
- Reload order (`reload_order`): `"start-first"` (default) starts and health-checks the new plugin while the old one
  keeps serving, switches invokes to the new one, then (RETIRE_AFTER, 0.25 s, later) drains and stops the old one:
  invokes never wait, and a new binary that fails to start or to pass health leaves the old PROCESS serving
  untouched. `"stop-first"` stops the old one, then starts the new one; invokes wait for the new one meanwhile; on
  failure the previous binary is restarted.
  Either way a failed start rolls `<home>/bin/plugin` back to `plugin.prev` and reports the plugin's stderr.
- Builds start once the sources are quiet (`[go] debounce_ms`, the quiet window, see gowatch.py). A change seen
  during a build cancels that build at once: its process group is killed and reaped before anything else happens
  (gobuild.Builder), so two builds of one plugin never run at once; a new build starts after the quiet window. A
  build that ended although its sources changed meanwhile (the change's events were still on their way) is neither
  installed nor reported: the build inputs are snapshotted again when it ends, and differ. Only a build of the
  latest sources is installed. Install and the switch are never cancelled by changes (they take milliseconds). The
  CPU time of cancelled builds is counted (Builder.cancelled_cpu_s) and logged with each cancellation.
- `invoke(method, request, timeout=10)`: when no plugin is serving but one is on its way (build, switch, restart
  after a crash) the call waits for it, bounded by `timeout` overall; a call that hit a plugin being replaced is
  retried on the new one (runtime.PluginSlot, as in external mode). Errors are `protocol.CommandError` (codes
  not_running, timeout, rpc_error).
- A plugin killed from outside is noticed at once (the child watcher), grpcConnected goes false, and it is restarted
  from the installed binary with exponential backoff (`restart_backoff` 0.25 s doubling up to `restart_backoff_max`
  10 s; the streak resets after the plugin ran `restart_reset` 10 s).
- A plugin dir without `pkg/` (and no `[go] watch`/`[build] command` of its own): GoPath does nothing, goStatus "idle".
- Debug mode (`GoPath(ctx, debug_port=N)`): builds carry delve's debug flags (gobuild.Builder's `debug`), and every
  launch goes through debugsession.DebugSession (the plugin under delve on port N, restarted under the same delve on
  a reload, breakpoints kept). A reload then always replaces the plugin stop-first: the new process is the old
  one's restart under the same delve.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

from omnibroker import protocol
from omnibroker.protocol import BuildError, CommandError, ErrorCode
from omnibroker.settings import GoSettings

from . import buildstamp
from .context import PluginContext
from .gobuild import (BINARY_NAME, Builder, BuildResult, InstallError, discard_displaced, install, make_durable,
                      rollback)
from .goplugin import PluginError, PluginHost
from .gowatch import GoWatcher, WatchError
from .runtime import Background, Backoff, PluginSlot
from .state import GoStatus as S

if TYPE_CHECKING:
    from .debugsession import DebugSession

_NOT_RELOADS = ("start", "start-stale", "start-unchanged", "restart")   # cycles that emit no dev_reload_* events
# Seconds a replaced plugin keeps running after the switch, and the new binary waits to be made durable: the frontend
# calls the new plugin as soon as it hears of the reload, and the old one's shutdown and the fsync would take the
# cores from those first calls (docs/performance.md). A stop does not wait.
RETIRE_AFTER = 0.25


class GoPath:
    def __init__(self, ctx: PluginContext, *, debug_port: int = 0):
        self.ctx = ctx
        self.part = ctx.go
        has_pkg = os.path.isdir(os.path.join(ctx.dir, "pkg"))
        explicit = ctx.settings.build.command is not None and self.settings.watch is not None
        self.enabled: bool = self.settings.enabled if self.settings.enabled is not None else (has_pkg or explicit)
        self.builder = Builder(ctx, debug=bool(debug_port))
        self.debug: DebugSession | None = None
        if debug_port:
            from . import debugsession          # debug mode only: delve's client and session
            self.debug = debugsession.DebugSession(ctx, debug_port)
        self.bin_dir = os.path.join(ctx.home, "bin")
        self.installed = os.path.join(self.bin_dir, BINARY_NAME)
        self.slot = PluginSlot("the Go plugin", coming=self._coming, usable=lambda host: host.connected,
                               why=lambda last: self.ctx.state.lastError or last or "no plugin process")
        self.watcher: GoWatcher | None = None
        self._sources: GoWatcher | None = None          # the watcher's file filter (kept if watching failed)
        self.last_cycle: dict[str, Any] = {}          # timings (loop.time()) of the last build/reload cycle
        self.cycles = 0                                 # completed (not cancelled) cycles
        self.discarded = 0                              # finished builds not installed: their sources changed
        self._lock = asyncio.Lock()                     # serialises every change of self.plugin
        self._want = asyncio.Event()
        self._want_reason = ""
        self._runner: asyncio.Task | None = None
        self._cycle_task: asyncio.Task | None = None
        self._restart_task: asyncio.Task | None = None
        self._background = Background()
        self._hurry = asyncio.Event()                   # set by stop(): what waits RETIRE_AFTER goes at once
        self._install_lock = threading.Lock()          # install, rollback and stamping of <home>/bin/plugin
        self._settling: asyncio.Task | None = None      # the last install being made durable, then stamped
        self._phase = "idle"                            # idle | building | installing | switching
        self._waiters: list[asyncio.Future] = []        # rebuild(wait=True) callers for the next cycle
        self._cycle_waiters: list[asyncio.Future] = []
        self._stopping = False
        self._started = False
        self._generation = 0                            # bumped by start() and stop()
        self._backoff = Backoff(self.settings.restart_backoff, self.settings.restart_backoff_max,
                                self.settings.restart_reset)
        self._burst_first: float | None = None
        self._reload_open = False                       # a dev_reload_start awaits its complete/error

    @property
    def settings(self) -> GoSettings:
        return self.ctx.settings.go_settings

    # --- lifecycle -----------------------------------------------------------------------------------------------
    async def start(self, *, force_build: bool = False) -> None:
        """Watch, build (see module doc; `force_build` ignores `build_on_start`), launch. Returns once the plugin is
        ready or the first attempt failed (the failure is reported as events and status, never raised). Idempotent."""
        ctx = self.ctx
        if not self.enabled:
            self.part.change_state(S.IDLE)
            return
        if self._started:
            return
        self._started = True
        self._stopping = False
        self._hurry.clear()
        self._generation += 1
        generation = self._generation
        self.part.change_state(S.STARTING, lastError="")        # IDLE/STOPPED -> STARTING
        output_rel = os.path.relpath(os.path.dirname(self.builder.output), ctx.dir)
        ignore = list(self.settings.ignore)
        if not output_rel.startswith(os.pardir):
            ignore.append(output_rel.replace(os.sep, "/") + "/**")
        self.watcher = GoWatcher(ctx, self._on_change, on_event=self._on_event, on_error=self._on_watch_error,
                                 ignore=ignore)
        self._sources = self.watcher
        try:
            self.watcher.start()
        except WatchError as e:
            # keep going without watching: rebuild still works; the reason is visible
            ctx.log("go-watch", "error", str(e))
            ctx.errors([BuildError(message=str(e))])
            self.watcher = None
        self._runner = asyncio.create_task(self._run())
        policy = self.settings.build_on_start
        if force_build or policy == "always":
            skip = False
        elif policy == "missing":
            skip = os.path.isfile(self.installed)
        else:
            skip = await self._unchanged_since_install()
            if self._stopping or generation != self._generation:
                return                  # stopped (and maybe started again) while we looked
        if skip:
            # "changed": a stamped binary that fails to start is not rolled back to plugin.prev (older than the
            # sources): nothing serves, so a build follows
            await self._switch("start-unchanged" if policy == "changed" else "start", None)
            if self.plugin is None and not self._stopping:
                await self._request_and_wait("start")
        else:
            await self._request_and_wait("start")

    async def stop(self) -> None:
        """Stop watching, cancel any build (killing it), stop the plugin(s). goStatus "stopped"."""
        if not self.enabled:
            return
        self._stopping = True
        self._hurry.set()
        self._generation += 1
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None
        tasks = [t for t in (self._cycle_task, self._runner, self._restart_task) if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._cycle_task = self._restart_task = None
        async with self._lock:
            host = self.plugin
            self._set_plugin(None)
        stops = [self._stop_host(host)] if host is not None else []
        if self._background:
            stops.append(self._background.wait())
        if stops:
            await asyncio.gather(*stops, return_exceptions=True)
        if self.debug is not None:
            await self.debug.stop()
        for fut in self._waiters + self._cycle_waiters:
            if not fut.done():
                fut.set_result(False)
        self._waiters, self._cycle_waiters = [], []
        self._phase = "idle"
        self._started = False
        self._reload_open = False
        self.part.change_state(S.STOPPED, pluginPid=0, buildQueued=False)

    async def rebuild(self, wait: bool = True) -> bool:
        """Force a build + reload now (no debounce; a running build is cancelled; never skipped by the build stamp).
        With wait, returns whether the cycle ended with the new plugin serving."""
        if not self.enabled:
            self.ctx.log("manager", "info", "rebuild ignored: this plugin has no Go backend (no pkg/ dir)")
            return False
        if not self._started:
            await self.start(force_build=True)
            return self.plugin is not None and self.part.state is S.READY
        self._cancel_build("rebuild requested")
        if wait:
            return await self._request_and_wait("rebuild")
        self._request("rebuild")
        return True

    # --- invoke ----------------------------------------------------------------------------------------------------
    def _coming(self) -> bool:
        """A plugin is on its way (a build/switch cycle or a crash restart is pending)."""
        if self._stopping or not self._started:
            return False
        return (self._phase != "idle" or self._want.is_set()
                or (self._restart_task is not None and not self._restart_task.done()))

    async def invoke(self, method: str, request: bytes, timeout: float = 10.0) -> bytes:
        """Forward a raw unary gRPC call to the plugin; waits (within `timeout`) across reloads and restarts."""
        if not self.enabled:
            raise CommandError(ErrorCode.NOT_RUNNING, "this plugin has no Go backend (no pkg/ dir)")
        return await self.slot.call(method, request, timeout)

    # --- internals: plugin bookkeeping ---------------------------------------------------------------------------------
    @property
    def plugin(self) -> PluginHost | None:
        """The plugin process serving calls now."""
        return self.slot.host

    def _set_plugin(self, host: PluginHost | None) -> None:
        self.slot.set(host)

    def _new_host(self) -> PluginHost:
        return PluginHost(self.ctx, on_exit=self._on_plugin_exit)

    async def _launch(self, host: PluginHost) -> None:
        """Start the installed binary in `host`: as its own process, or under delve in debug mode."""
        if self.debug is not None:
            await self.debug.launch(host, self.installed)
        else:
            await host.start(self.installed)

    async def _stop_host(self, host: PluginHost) -> None:
        await host.drain(self.settings.drain_timeout)
        await host.stop(self.settings.stop_grace)

    async def _after_switch(self) -> None:
        """RETIRE_AFTER seconds, or less when the path stops."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), RETIRE_AFTER)

    async def _retire(self, host: PluginHost) -> None:
        """Stop a plugin the switch replaced, once the new one has had its first calls to itself."""
        await self._after_switch()
        await self._stop_host(host)

    # --- internals: watcher callbacks -------------------------------------------------------------------------------
    def _on_event(self, rel: str) -> None:
        if self._burst_first is None:
            self._burst_first = asyncio.get_running_loop().time()
        self._cancel_build(f"{rel} changed")

    def _on_change(self, paths: list[str]) -> None:
        self._request("change")

    def _on_watch_error(self, message: str) -> None:
        self.part.set_error(message)
        self.ctx.errors([BuildError(message=message)])

    def _cancel_build(self, why: str) -> None:
        task = self._cycle_task
        if task is not None and not task.done() and self._phase == "building":
            self.ctx.log("go-build", "info", f"cancelling the running build: {why}")
            task.cancel()

    def _request(self, reason: str) -> None:
        if self._stopping:
            return
        self._want_reason = reason
        self._want.set()

    async def _request_and_wait(self, reason: str) -> bool:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._request(reason)
        return await fut

    # --- internals: the build stamp ---------------------------------------------------------------------------------
    def _inputs(self) -> str:
        """The build inputs digest (buildstamp.inputs_digest). Blocking (walks the sources): run it in a thread."""
        b = self.builder
        sources = self._sources.snapshot() if self._sources is not None else []
        return buildstamp.inputs_digest(b.command, b.cwd, b.output, b.env(), sources)

    def _check_stamp(self) -> tuple[dict | None, str]:
        if not os.path.isfile(self.installed):
            return None, "no installed binary"
        return buildstamp.check(self.installed, self._inputs())

    async def _unchanged_since_install(self) -> bool:
        """Does the installed binary come from the current inputs (its stamp says so)? Logs the verdict."""
        ctx = self.ctx
        try:
            stamp, why = await asyncio.to_thread(self._check_stamp)
        except Exception as e:          # never let the shortcut break a start: build
            stamp, why = None, f"could not compare the build inputs: {e!r}"
        if stamp is None:
            ctx.log("go-build", "info", f"building at start: {why}")
            return False
        # what the status said when that binary was built (Omniview shows these)
        self.part.update(lastBuildTime=str(stamp.get("built") or protocol.ZERO_TIME),
                         lastBuildDuration=int(stamp.get("duration_ns", 0) or 0))
        ctx.log("go-build", "info",
                f"sources unchanged since the installed build (stamp {stamp['inputs'][:12]}, built "
                f"{stamp.get('built', '?')}): starting it without a build; `omnictl rebuild {ctx.id}` forces one")
        return True

    async def _snapshot_inputs(self) -> str | None:
        try:
            return await asyncio.to_thread(self._inputs)
        except Exception as e:
            self.ctx.log("go-build", "warn", f"could not snapshot the build inputs ({e!r}): this build will not be "
                                             f"stamped, the next start builds again")
            return None

    def _install(self, result: BuildResult) -> tuple[int, int]:
        """Install (raises InstallError) without waiting for the disk; the installed file's identity (st_dev,
        st_ino), for `_settle`. Blocking: run it in a thread."""
        with self._install_lock:
            install(result.binary, self.bin_dir, link=self.builder.replaces_output, durable=False, free_later=True)
            st = os.stat(self.installed)
            return st.st_dev, st.st_ino

    def _rollback(self) -> bool:
        with self._install_lock:
            return rollback(self.bin_dir)

    def _settle(self, ident: tuple[int, int], inputs: str | None, built: str, duration_ns: int) -> str | None:
        """Remove the binaries the install displaced (discard_displaced), make the installed binary durable, then
        stamp it with the inputs taken before its build, unless it was replaced meanwhile (a newer install, a
        rollback). A crash before the stamp leaves no stamp: the next start builds. Returns an error to log, if any.
        Blocking: run it in a thread."""
        with self._install_lock:
            discard_displaced(self.bin_dir)
            try:
                st = os.stat(self.installed)
                if (st.st_dev, st.st_ino) != ident:
                    return None
                make_durable(self.installed)
                if inputs is not None:      # lastBuild*: a start that skips the build shows them again
                    buildstamp.write_stamp(self.installed, inputs, built=built, duration_ns=duration_ns)
            except OSError as e:
                buildstamp.remove_stamp(self.installed)
                return (f"could not make the installed binary durable or stamp it "
                        f"({buildstamp.stamp_path(self.installed)}): {e.strerror or e}; the next start builds again")
            return None

    async def _settle_later(self, switch: asyncio.Future, ident: tuple[int, int], inputs: str | None) -> None:
        state = self.ctx.state              # the lastBuild* this build set
        built, duration_ns = state.lastBuildTime, state.lastBuildDuration
        await asyncio.wait({switch})
        await self._after_switch()
        error = await asyncio.to_thread(self._settle, ident, inputs, built, duration_ns)
        if error:
            self.ctx.log("go-build", "warn", error)

    async def settled(self) -> None:
        """Wait until the last installed binary is on disk and stamped (or found replaced)."""
        if self._settling is not None:
            await asyncio.shield(self._settling)

    # --- internals: the cycle runner --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            await self._want.wait()
            self._want.clear()
            reason = self._want_reason
            waiters, self._waiters = self._waiters, []
            self._cycle_waiters = waiters
            first = self._burst_first
            self._burst_first = None
            task = asyncio.create_task(self._cycle(reason, first))
            self._cycle_task = task
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._phase = "idle"
            if task.cancelled():
                # a change (or rebuild) cancelled this build: another cycle follows; its waiters carry over
                self._waiters = waiters + self._waiters
                self._cycle_waiters = []
                continue
            ok = bool(task.result()) if task.exception() is None else False
            if task.exception() is not None:
                self.ctx.log("manager", "error", f"internal error in the Go reload cycle: {task.exception()!r}")
                self.part.change_state(S.ERROR, lastError=f"internal error: {task.exception()!r}")
                self._reload_open = False
            self.cycles += 1
            for fut in waiters:
                if not fut.done():
                    fut.set_result(ok)
            self._cycle_waiters = []

    async def _cycle(self, reason: str, first_event: float | None) -> bool:
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        burst = self.watcher.last_burst if self.watcher is not None and reason == "change" else None
        t = {"reason": reason, "start": loop.time(),
             "first_event": burst[0] if burst else first_event, "fired": burst[1] if burst else None}
        self.last_cycle = t
        is_reload = reason not in _NOT_RELOADS
        if is_reload and not self._reload_open:
            # one dev_reload_start per reload, even when a change cancels its build and a new one follows
            self._reload_open = True
            ctx.reload_start()
        self._phase = "building"
        self.part.change_state(S.BUILDING)
        inputs = await self._snapshot_inputs()          # BEFORE the build: a later edit is never stamped as built
        result: BuildResult = await self.builder.build()
        t["build_start"], t["build_end"], t["queued"] = result.started, result.finished, result.queued
        if inputs is not None and await self._snapshot_inputs() != inputs:
            self._discard_stale(result)
            raise asyncio.CancelledError()      # a cancelled cycle: the change's own events ask for the next build
        self.part.update(lastBuildDuration=int(result.duration * 1e9), lastBuildTime=protocol.now_rfc3339())
        if not result.ok:
            msg = result.summary()
            ctx.log("go-build", "error", msg)
            self._fail(msg, result.errors, reload=is_reload)
            if self.plugin is None and reason == "start" and os.path.isfile(self.installed):
                # nothing serving yet: run the installed (older) binary meanwhile
                await self._switch("start-stale", t, keep_error=True)
            t["end"] = loop.time()
            return False
        ctx.log("go-build", "info", result.summary())
        if result.errors:
            ctx.errors(result.errors)           # warnings of a build that succeeded (severity "warning")
        self._phase = "installing"
        try:
            ident = await asyncio.to_thread(self._install, result)
        except InstallError as e:
            self._fail(str(e), [BuildError(message=str(e))], reload=is_reload)
            t["end"] = loop.time()
            return False
        t["installed"] = loop.time()
        self._phase = "switching"
        switch = asyncio.ensure_future(self._switch(reason, t))
        # durable and stamped once the switch is done (a failed start has rolled the binary back: not stamped)
        self._settling = self._background.spawn(self._settle_later(switch, ident, inputs))
        ok = await asyncio.shield(switch)
        t["end"] = loop.time()
        return ok

    def _discard_stale(self, result: BuildResult) -> None:
        """The sources changed while this build ran (the change's events are still on their way): neither its
        binary nor its errors are used."""
        self.discarded += 1
        self.ctx.log("go-build", "info", f"build ended after {result.duration:.2f} s but the sources changed "
                                         f"meanwhile: discarding it")
        if self.watcher is None:
            self._request("change")             # no watcher to report the change: build again now

    def _fail(self, message: str, errors: list[BuildError], *, reload: bool = True) -> None:
        ctx = self.ctx
        ctx.errors(errors or [BuildError(message=message)])
        self.part.change_state(S.ERROR, lastError=message)
        if reload:
            self._reload_open = False
            ctx.reload_error(message)

    async def _switch(self, reason: str, t: dict | None, *, keep_error: bool = False) -> bool:
        """Start the installed binary and make it the serving plugin (see module doc for the order)."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        order = self.settings.reload_order
        async with self._lock:
            if self._stopping:
                return False
            old = self.plugin
            if old is not None and (order == "stop-first" or self.debug is not None):
                self._set_plugin(None)
                self.part.update(pluginPid=0)
                await self._stop_host(old)      # debug mode: closes its channel; delve ends it as it restarts it
                old = None
            if not keep_error:
                self.part.change_state(S.STARTING)               # BUILDING -> STARTING
            new = self._new_host()
            if t is not None:
                t["plugin_start"] = loop.time()
            try:
                await self._launch(new)
            except PluginError as e:
                return await self._start_failed(e, reason, keep_error)
            if self._stopping:
                await new.stop()
                return False
            if t is not None:
                t.update({f"plugin_{k}": v for k, v in new.timings.items()})
            self._set_plugin(new)
            if keep_error:
                self.part.update(pluginPid=new.pid)
            else:
                self.part.change_state(S.READY, pluginPid=new.pid, lastError="")      # STARTING -> READY
            if t is not None:
                t["ready"] = loop.time()
                if "installed" in t:
                    ctx.log("go-build", "info", _timing_line(t))
            if reason not in _NOT_RELOADS:
                self._reload_open = False
                ctx.reload_complete()
        if old is not None:
            self._background.spawn(self._retire(old))
        return not keep_error

    async def _start_failed(self, e: PluginError, reason: str, keep_error: bool) -> bool:
        """The new binary did not come up: roll back to plugin.prev, report, keep (or bring back) the old one.
        A stamped binary started without a build ("start-unchanged") is not rolled back: its stamp goes, a build
        follows."""
        ctx = self.ctx
        rolled = False
        if reason not in ("start-stale", "start-unchanged", "restart"):
            rolled = await asyncio.to_thread(self._rollback)
        if reason == "start-unchanged":
            await asyncio.to_thread(buildstamp.remove_stamp, self.installed)
            msg = f"the installed plugin binary failed to start: {e}\n(building it again)"
        else:
            msg = f"the new plugin binary failed to start: {e}"
        if rolled:
            msg += "\n(rolled back to the previous binary; " + (
                "the previous plugin keeps serving)" if self.plugin is not None else "restarting it)")
        ctx.log("manager", "error", msg)
        self._fail(msg, [BuildError(message=msg)], reload=reason not in _NOT_RELOADS)
        if self.plugin is None and rolled and not self._stopping:
            prev = self._new_host()
            try:
                await self._launch(prev)
            except PluginError as e2:
                ctx.log("manager", "error", f"the previous plugin binary failed to start too: {e2}")
                self.part.update(pluginPid=0)
                return False
            self._set_plugin(prev)
            self.part.update(pluginPid=prev.pid)
        elif self.plugin is None:
            self.part.update(pluginPid=0)
        return False

    # --- internals: crashes -------------------------------------------------------------------------------------------
    def _on_plugin_exit(self, host: PluginHost, rc: int | None) -> None:
        if self._stopping or host is not self.plugin:
            return                      # a plugin we replaced or are stopping
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        self._set_plugin(None)
        self._backoff.ran(loop.time() - (host.timings.get("healthy") or loop.time()))
        tail = host.stderr_tail
        msg = f"the plugin (pid {host.pid}) exited unexpectedly with code {rc}" + (
            f"; its last output:\n{tail}" if tail else "")
        ctx.log("manager", "error", msg)
        self.part.update(pluginPid=0, lastError=msg)
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.create_task(self._restart())

    async def _restart(self) -> None:
        ctx = self.ctx
        while not self._stopping:
            delay = self._backoff.next()
            self.part.change_state(S.STARTING)                  # READY/ERROR (crashed) -> STARTING
            ctx.log("manager", "info", f"restarting the plugin in {delay:.2f} s (attempt {self._backoff.attempts})")
            await asyncio.sleep(delay)      # backoff, not synchronisation
            async with self._lock:
                if self._stopping or self.plugin is not None:
                    return                  # a reload brought up a new one meanwhile
                if not os.path.isfile(self.installed):
                    break
                host = self._new_host()
                try:
                    await self._launch(host)
                except PluginError as e:
                    self.part.change_state(S.ERROR, lastError=f"restart failed: {e}")
                    ctx.log("manager", "error", f"restart failed: {e}")
                    continue
                self._set_plugin(host)
                with ctx.batch():
                    self.part.change_state(S.READY, pluginPid=host.pid, lastError="")   # STARTING -> READY
                    self.part.count_restart()
                return
        if not self._stopping:
            self._request("restart")            # no installed binary: build one


def _timing_line(t: dict) -> str:
    """Where a reload's time went, from a cycle's timings (loop.time()): one log line for the developer."""
    steps = []
    if t.get("first_event") is not None and t.get("fired") is not None:
        steps.append(("quiet window", t["fired"] - t["first_event"]))
    begin = t["fired"] if t.get("fired") is not None else t["start"]
    steps += [("to the build", t["build_start"] - begin), ("build", t["build_end"] - t["build_start"]),
              ("install", t["installed"] - t["build_end"]), ("start + handshake", t["ready"] - t["installed"])]
    first = t["first_event"] if t.get("first_event") is not None else t["start"]
    parts = ", ".join(f"{name} {secs * 1000:.0f} ms" for name, secs in steps)
    return f"serving the new build {(t['ready'] - first) * 1000:.0f} ms after the {t['reason']}: {parts}"
