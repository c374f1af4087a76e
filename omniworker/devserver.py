"""DevServer: one plugin's dev server in one of three modes.

- idle:     nothing runs
- managed:  ViteServer (ui/) + GoPath (pkg/: watch, build, install, reload)         -- Mode A
- external: External (.devinfo reattach; the process is the developer's)            -- Mode B

Parts are imported when first used: a Vite-only plugin never loads grpc, an idle worker stays small.

The mode is the DevServer's own PartState (`ctx.mode`, transitions in state.py): IDLE -> MANAGED (start),
IDLE -> EXTERNAL (attach), back to IDLE (stop, detach); start from external mode detaches first, attach from managed
mode stops first.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from omnibroker import protocol
from omnibroker.protocol import CommandError, ErrorCode

from .context import PluginContext
from .state import GoStatus, Mode, ViteStatus

NO_PORT = "no Vite port was allocated"


class DevServer:
    def __init__(self, ctx: PluginContext):
        self.ctx = ctx
        self.vite = None
        self.go = None
        self.external = None
        self._go_start: asyncio.Task | None = None
        self._halves = (True, True)         # (vite, go) asked for by the last start: what restart brings back
        self._vite_port = 0                 # the port the broker allocated for the last start
        self._debug_port = 0                # the Go half's debug port (0: not in debug mode)

    @property
    def mode(self) -> str:
        return self.ctx.mode.state.value

    # --- managed -------------------------------------------------------------------------------------------------
    async def start(self, vite: bool = True, go: bool = True, vite_port: int = 0, debug_port: int = 0) -> None:
        """Managed mode; `debug_port` (not 0): the Go plugin runs under delve on that port (debugsession.py)."""
        if self.mode == "external":
            await self.detach()
        if self.mode == "managed":
            # idempotent, except for debug mode switched on or off (the Go half starts again), and for a Vite that
            # could not start for want of a port and has one now
            if self.go is not None and debug_port != self._debug_port:
                await self._start_go(debug_port)
            if vite and vite_port and self.vite is None:
                from .vite import ViteServer
                self._halves = (True, self._halves[1])
                self._vite_port = vite_port
                if self.ctx.vite.error.startswith(NO_PORT):
                    self.ctx.vite.forget_error()        # ViteServer.start publishes the change
                self.vite = ViteServer(self.ctx)
                await self.vite.start(vite_port)
            return
        self._halves = (vite, go)
        self._vite_port = vite_port
        self._debug_port = debug_port
        self.ctx.clear_errors()
        self.ctx.mode.change_state(Mode.MANAGED)          # IDLE -> MANAGED
        self.ctx.log("manager", "info", f"starting managed dev server in {self.ctx.dir}")
        self.ctx.plugin_meta()          # a missing or invalid plugin.yaml is reported now, not at the first reload
        # Both halves start side by side and report progress as events; `start` answers at once.
        if vite and not vite_port:
            msg = (f"{NO_PORT}: the service's Vite port range ([service] vite_ports) is exhausted; "
                   "stop another plugin or widen the range, then `start` again")
            self.ctx.vite.change_state(ViteStatus.ERROR, lastError=msg)
            self.ctx.log("manager", "error", msg)
            self.ctx.errors([protocol.BuildError(message=msg)])
        elif vite:
            from .vite import ViteServer
            self.vite = ViteServer(self.ctx)
            await self.vite.start(vite_port)
        if go:
            await self._start_go(debug_port)

    async def _start_go(self, debug_port: int) -> None:
        """(Re)start the Go half, in debug mode when `debug_port` is not 0; it reports its progress as events."""
        from .gopath import GoPath
        go, go_start, self.go, self._go_start = self.go, self._go_start, None, None
        if go is not None:
            await go.stop()
        if go_start is not None:
            await asyncio.gather(go_start, return_exceptions=True)
        self._debug_port = debug_port
        self.go = GoPath(self.ctx, debug_port=debug_port)
        self._go_start = asyncio.create_task(self.go.start())

    async def stop(self) -> None:
        if self.mode == "external":
            await self.detach()
            return
        vite, go, self.vite, self.go = self.vite, self.go, None, None
        go_start, self._go_start = self._go_start, None
        if vite is not None:
            await vite.stop()
        if go is not None:
            await go.stop()             # also releases a start still waiting for its first build
        if go_start is not None:
            await asyncio.gather(go_start, return_exceptions=True)
        self.ctx.mode.change_state(Mode.IDLE)             # MANAGED -> IDLE

    async def restart(self, vite_port: int = 0, debug_port: int = 0) -> None:
        """Stop and start again in the current mode (idle: nothing to do). `vite_port`: the broker's allocation
        (else the one the last start got); `debug_port`: the broker's (0: not in debug mode)."""
        if self.mode == "external":
            await self.detach()
            await self.attach()
            return
        if self.mode != "managed":
            return
        vite_port = vite_port or self._vite_port
        vite, go = self._halves         # a half that failed to start (e.g. no port) is tried again
        await self.stop()
        await self.start(vite=vite, go=go, vite_port=vite_port, debug_port=debug_port)

    async def rebuild(self) -> None:
        if self.go is None:
            raise CommandError(ErrorCode.NOT_RUNNING, f"{self.ctx.id}: no managed Go path is running; `start` first")
        await self.go.rebuild(wait=False)     # `rebuild` answers "accepted"; progress comes as events

    # --- external ------------------------------------------------------------------------------------------------
    async def attach(self) -> None:
        if self.mode == "managed":
            await self.stop()
        if self.mode == "external":
            return
        from .external import External
        with self.ctx.batch():
            self.ctx.clear_errors()
            self.ctx.mode.change_state(Mode.EXTERNAL)     # IDLE -> EXTERNAL
        self.ctx.plugin_meta()
        self.external = External(self.ctx)
        await self.external.attach()

    async def detach(self) -> None:
        """Leave external mode (the developer's process keeps running); in another mode there is nothing to leave."""
        if self.mode != "external":
            return
        external, self.external = self.external, None
        if external is not None:
            await external.detach()
        with self.ctx.batch():
            # the managed parts' last run is over too: idle shows nothing running
            self.ctx.vite.change_state(ViteStatus.IDLE, vitePort=0)
            self.ctx.go.change_state(GoStatus.IDLE, pluginPid=0)
            self.ctx.mode.change_state(Mode.IDLE)         # EXTERNAL -> IDLE

    def external_info(self) -> Any:
        info = self.external.info() if self.external is not None else None
        return protocol.to_builtins(info) if info is not None else None

    # --- calls ---------------------------------------------------------------------------------------------------
    async def invoke(self, method: str, request_b64: str, timeout: float) -> dict:
        try:
            request = base64.b64decode(request_b64, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError(ErrorCode.BAD_PROPERTY, "'request' is not valid base64") from None
        if not method.startswith("/") or method.count("/") != 2:
            raise CommandError(ErrorCode.BAD_PROPERTY, f"'method' must look like /package.Service/Method, "
                                                       f"not {method!r}")
        target = self.go if self.mode == "managed" else self.external
        if target is None:
            raise CommandError(ErrorCode.NOT_RUNNING, f"{self.ctx.id}: no plugin process (mode {self.mode}); "
                                                      "`start` or `attach` first")
        response = await target.invoke(method, request, timeout)
        if len(response) > protocol.MAX_INVOKE_RESPONSE_BYTES:
            raise CommandError(ErrorCode.TOO_LARGE, f"{method} answered {len(response)} bytes, over the limit of "
                                                    f"{protocol.MAX_INVOKE_RESPONSE_BYTES} bytes for an `invoke` "
                                                    f"response (MAX_INVOKE_RESPONSE_BYTES)")
        return {"response": base64.b64encode(response).decode()}

    async def apply(self, desired: protocol.Desired, vite_port: int, debug_port: int = 0) -> None:
        """Bring the mode to what the broker says the user wants (after a crash or restart)."""
        if desired.mode == self.mode:
            return
        if desired.mode == "managed":
            await self.start(vite=desired.vite, go=desired.go, vite_port=vite_port, debug_port=debug_port)
        elif desired.mode == "external":
            await self.attach()
        else:
            await self.stop()

    async def shutdown(self) -> None:
        await self.stop()
