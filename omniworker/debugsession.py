"""Debug mode of the managed Go path: the plugin runs under delve on the plugin's debug port, and the session outlives
the reloads omni causes.

`DebugSession(ctx, port)` is GoPath's launcher in debug mode (gopath.py calls `launch(host, binary)` where it would
call `host.start(binary)`):
- The first launch runs `dlv exec` on the installed binary (delve.DelveTarget) with the go-plugin host's environment;
  later launches — a reload (a new binary installed at the same path), a restart after the plugin exited — restart
  the target under the same delve (`RPCServer.Restart`): the same port, the user's breakpoints kept. The host then
  adopts the new process (goplugin.PluginHost.adopt: connect, health-check, pidfd on its end).
- A delve that is gone (killed) is reported (error log, error event, lastError); its plugin dies with it (the
  OMNI_CHILD mark), GoPath's crash restart launches again, and that launch runs a new delve on the same port which
  sets every breakpoint remembered before it was lost.
- Breakpoints remembered: delve 1.20 lists breakpoints only while the target is halted, and a breakpoint can be
  created only then; so the list is read while the target is paused (at each poll below) and taken from delve's
  answer at each reload. A breakpoint created during a halt shorter than PAUSE_POLL is remembered at the next pause
  or reload, not before.
- Paused is not dead: a watcher holds its own connection to delve and asks for delve's `State` blocking — delve
  answers only once the target stops (a breakpoint, a halt from an IDE) — so a running plugin costs no CPU. While it
  is stopped, the watcher asks the non-blocking `State` every PAUSE_POLL s until it runs again; `paused` and
  `pausedAt` ("file.go:LINE") follow in DevServerState. Nothing restarts a paused plugin: its process lives (the
  managed path health-checks a plugin only when it launches it) and calls made to it wait within their timeout.
- A debug port held by another program: the broker hands out the next free one of `[service] debug_ports`
  (`other_port("debug", taken)`); the move is logged as a warning.
- `stop()`: delve kills the target and exits (DelveTarget.stop); nothing is left.
"""
from __future__ import annotations

import asyncio
import os

from omnibroker.protocol import BuildError, CommandError

from .context import PluginContext
from .delve import DelveClient, DelveError, DelveTarget, Stop, stop_of, user_breakpoints
from .goplugin import PluginError, PluginHost

PAUSE_POLL = 0.5            # s between two looks at a paused target (only while it is paused)


def where(bp: dict) -> dict:
    """What is kept of a delve breakpoint to set it again in a new delve."""
    return {"file": bp.get("file", ""), "line": int(bp.get("line") or 0)}


class DebugSession:
    def __init__(self, ctx: PluginContext, port: int):
        self.ctx = ctx
        self.port = port
        self.target: DelveTarget | None = None
        self.breakpoints: list[dict] = []           # the user's breakpoints as last seen ({"file", "line"})
        self._watcher: asyncio.Task | None = None
        self._launched = asyncio.Event()             # set (and replaced) at each launch: wakes a waiting watcher
        self._restarting = False                     # omni halts the target to restart it: not a pause

    async def launch(self, host: PluginHost, binary: str) -> None:
        """Run `binary` under delve (or restart it under the running one) and have `host` adopt the new plugin
        process. PluginError says why not (delve missing, its port, no handshake)."""
        try:
            line = await self._run(binary, host.plugin_env())
        except (DelveError, CommandError) as e:
            message = str(e) if isinstance(e, DelveError) else e.reason
            raise PluginError(message, getattr(e, "output", "")) from None
        assert self.target is not None
        launched, self._launched = self._launched, asyncio.Event()
        launched.set()
        await host.adopt(line, self.target.plugin_pid)

    async def _run(self, binary: str, env: dict[str, str]) -> str:
        target = self.target
        if target is not None and target.running:
            self._restarting = True
            try:
                restarted = await target.restart()
            finally:
                self._restarting = False
            self.breakpoints = [where(bp) for bp in restarted.breakpoints]
            return restarted.handshake
        while True:
            target = DelveTarget(self.ctx, self.port, on_exit=self._delve_exited)
            try:
                line = await target.start(binary, env, breakpoints=self.breakpoints)
                break
            except DelveError as e:
                if not e.port_taken:
                    raise
                taken, self.port = self.port, await self.ctx.sink.other_port("debug", self.port)
                self.ctx.log("manager", "warn", f"debug port {taken} is in use by another program: delve listens "
                                                f"on {self.port} instead")
        self.target = target
        self.ctx.go.update(debugPort=self.port, paused=False, pausedAt="")
        if self.breakpoints:
            self.ctx.log("manager", "info", f"{len(self.breakpoints)} breakpoints set again in the new delve")
        self._watcher = asyncio.create_task(self._watch(target))
        return line

    def _delve_exited(self, target: DelveTarget, rc: int | None) -> None:
        if target is not self.target:
            return
        msg = (f"delve on {target.address} exited with code {rc}: the plugin is restarted under a new delve on the "
               f"same port ({len(self.breakpoints)} breakpoints set again)")
        self.ctx.errors([BuildError(message=msg)])
        self.ctx.go.update(paused=False, pausedAt="", lastError=msg)

    # --- paused is not dead ----------------------------------------------------------------------------------------
    def _show(self, stop: Stop | None) -> None:
        self.ctx.go.update(paused=stop is not None,
                           pausedAt=f"{os.path.basename(stop.file)}:{stop.line}" if stop is not None else "")

    async def _watch(self, target: DelveTarget) -> None:
        try:
            client = await DelveClient.connect(target.port)      # State calls (a blocking one holds its connection)
            lister = await DelveClient.connect(target.port)      # ListBreakpoints (delve answers it once halted)
        except DelveError:
            return                                  # delve went away at once: its exit is reported
        listing: asyncio.Future | None = None
        try:
            while target.running:
                launched = self._launched
                try:
                    state = (await client.call("State", {"NonBlocking": False}, timeout=None))["State"]
                except DelveError:
                    if client.closed:
                        return
                    state = {"exited": True}        # delve answers an error once the target has exited
                stop = stop_of(state)
                if stop is None:                    # exited: wait for the next launch
                    self._show(None)
                    await launched.wait()
                    continue
                while stop is not None:
                    if not self._restarting:
                        self._show(stop)
                        if listing is None or listing.done():
                            listing = lister.send("ListBreakpoints", {"All": False})
                            listing.add_done_callback(self._listed)
                    await asyncio.sleep(PAUSE_POLL)     # a poll while paused only
                    stop = await client.stopped_at()
                self._show(None)
        except DelveError:
            pass
        finally:
            await asyncio.gather(client.close(), lister.close())

    def _listed(self, listing: asyncio.Future) -> None:
        """delve's answer to ListBreakpoints: the user's breakpoints now."""
        if listing.cancelled() or listing.exception() is not None:
            return
        self.breakpoints = [where(bp) for bp in user_breakpoints(listing.result())]

    async def stop(self) -> None:
        """delve kills the plugin and exits; the state shows no debug port."""
        watcher, self._watcher = self._watcher, None
        target, self.target = self.target, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if target is not None:
            await target.stop()
        self.ctx.go.update(debugPort=0, paused=False, pausedAt="")
