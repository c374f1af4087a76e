"""omni.toml while the broker runs: its problems are reported, and a changed file is applied without restarting
anything, on `reload` or when the file changes (a watch on its directory: editors replace files rather than write them
in place).

Reported: `configError` in `ping`, `list` and `snapshot` ("" when the file loaded fine, else `<file>:<line>: <message>`,
several joined by "; "), and an `omni/config` event `{"path", "error"}` each time it changes.
Applied (registry.Registry.reload): a new entry is registered (its worker program added; `autostart` starts it), an
entry gone from the file is removed like `remove` (worker program stopped and removed), a changed entry's worker
restarts with the new spec in its current desired state; `[service] build_slots`, `vite_ports` and `debug_ports`
apply to the next grant and the next allocation. A refused entry keeps its previous version; a file that does not
parse changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from . import protocol

log = logging.getLogger("omnibroker")

DEBOUNCE = 0.2      # seconds of quiet after the last change to the file before it is read (a save is several events)


class ConfigWatch:
    def __init__(self, broker: Any):
        self.broker = broker
        self.path = os.path.abspath(broker.registry.config_path)
        self.error = broker.registry.config_error
        self._seen = self._read()
        self._lock = asyncio.Lock()
        self._observer: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError:
            return None

    # --- the watch -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.error:
            self._publish()
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        name = os.path.basename(self.path)
        touched = self._touched

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                paths = (event.src_path, getattr(event, "dest_path", "") or "")
                if any(os.path.basename(os.fsdecode(p)) == name for p in paths):
                    touched()

        try:
            observer = Observer()
            observer.schedule(Handler(), os.path.dirname(self.path), recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as e:
            log.warning("cannot watch %s (%s): changes apply on `omnictl reload`", self.path, e)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
        if self._timer is not None:
            self._timer.cancel()

    def _touched(self) -> None:
        """From the watchdog thread: (re)arm the debounce timer on the loop."""
        self._loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(DEBOUNCE, self.broker._spawn, self._reload_changed())

    async def _reload_changed(self) -> None:
        data = self._read()
        if data is None or data == self._seen:      # gone (maybe for a moment, as a save goes): only `reload` applies
            return
        try:
            await self.reload()
        except protocol.CommandError as e:
            log.warning("applying %s: %s", self.path, e.reason)

    # --- reload ----------------------------------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Read omni.toml again and apply it; the result names what changed and the file's problems."""
        async with self._lock:
            self._seen = self._read()
            broker = self.broker
            result = broker.registry.reload()
            service = broker.registry.service
            broker.slots.resize(service.slots)
            broker.ports.range_start, broker.ports.range_end = service.vite_ports
            broker.debug_ports.range_start, broker.debug_ports.range_end = service.debug_ports
            for plugin in result.added:
                broker.events.states[plugin] = broker._initial_state(plugin)
            for plugin in result.changed:
                broker._respec(plugin)
            self._report()
            for plugin in result.removed:
                await broker._drop_plugin(plugin)
            if result.added or result.changed:
                await broker.sync_programs()
            if result.added or result.removed or result.changed:
                log.info("%s reloaded: added %s, removed %s, changed %s", self.path, result.added, result.removed,
                         result.changed)
            return {"configError": self.error, "added": result.added, "removed": result.removed,
                    "changed": result.changed}

    def _report(self) -> None:
        error = self.broker.registry.config_error
        if error != self.error:
            self.error = error
            if error:
                log.error("configuration: %s", error)
            else:
                log.info("configuration: %s loaded without problems", self.path)
            self._publish()

    def _publish(self) -> None:
        self.broker.events.publish(protocol.CONFIG, {"path": self.path, "error": self.error}, "")
