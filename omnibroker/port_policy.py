"""The broker's port policy: which ports a plugin's desired state needs (Vite's, delve's debug port), taking them
with the state file write that records them, giving them back, and moving a plugin whose port another program took.

A part of omnibroker.broker.Broker (its base class): it works on the broker's two allocators, `ports` (Vite,
`[service] vite_ports`) and `debug_ports` (delve, `[service] debug_ports`), its registry and its event bus. A port
that is not the plugin's last one because that one was not free is said in the plugin's log.
"""
from __future__ import annotations

import logging

from . import protocol
from .ports import PortAllocator, take_ports
from .protocol import CommandError, DevServerState

log = logging.getLogger("omnibroker")


class PortPolicy:
    ports: PortAllocator
    debug_ports: PortAllocator

    def allocate_port(self, plugin: str, ports: PortAllocator | None = None) -> int:
        """The plugin's port from `ports` (Vite's by default), its preference persisted."""
        return self._ports_and(plugin, ((ports or self.ports, True),), self.registry.save)[0]

    def _wanted_ports(self, desired: protocol.Desired) -> tuple[tuple[PortAllocator, bool], ...]:
        """Which ports a desired state needs: Vite's (managed with Vite), delve's (managed, Go, debug)."""
        managed = desired.mode == "managed"
        return (self.ports, managed and desired.vite), (self.debug_ports, managed and desired.go and desired.debug)

    def set_desired(self, plugin: str, desired: protocol.Desired) -> tuple[int, int]:
        """Persist a desired state and take the ports it needs; returns (Vite port, debug port), 0 for one it does not
        need."""
        vite, debug = self._ports_and(plugin, self._wanted_ports(desired),
                                      lambda: self.registry.set_desired(plugin, desired))
        return vite, debug

    def _ports_and(self, plugin: str, wants: tuple[tuple[PortAllocator, bool], ...], persist) -> list[int]:
        """ports.take_ports, each move said in the plugin's log."""
        taken, moved = take_ports(plugin, wants, persist)
        for ports, old, new in moved:
            self._moved(plugin, ports, old, new)
        return taken

    def _moved(self, plugin: str, ports: PortAllocator, old: int, new: int) -> None:
        """Say that a plugin's port changed because its own was not free: its log shows it (an IDE's attach
        configuration, a bookmarked Vite URL need the new one)."""
        message = f"{ports.what} port {old} is not free (another program holds it): this plugin has port {new} now"
        log.warning("%s: %s", plugin, message)
        self.events.publish(protocol.LOG, protocol.log_payload(plugin, "manager", "warn", message), plugin)

    def on_port(self, identity: bytes, body: list[bytes]) -> None:
        """A port of a worker's (Vite's or delve's) was taken by another program: hold the next free one of the same
        range for it instead."""
        plugin = self._touch(identity)
        if plugin is None:
            return
        req = protocol.decode_portswap(body[0])
        desired = self.registry.get(plugin).desired
        answer = protocol.PortSwap(id=req.id, kind=req.kind)
        ports, wanted = self._wanted_ports(desired)[0 if req.kind == "vite" else 1]
        if not wanted:
            answer.error = f"{plugin!r} is not meant to hold a {ports.what} port (desired mode {desired.mode})"
        else:
            try:
                answer.port = ports.replace(plugin, req.taken)
                self._moved(plugin, ports, req.taken, answer.port)
            except CommandError as e:
                answer.error = e.reason
            self.registry.save()
        self._send_worker(identity, protocol.K_PORT, protocol.encode(answer))

    def release_port(self, plugin: str) -> None:
        """Give the plugin's ports back, in the state file's `held` too; their preferences stay. A failed write is only
        logged: `held` says what the broker holds now, and the broker rebuilds it at each start."""
        released = [ports.release(plugin) for ports in (self.ports, self.debug_ports)]
        if released == [None, None]:
            return
        try:
            self.registry.save()
        except CommandError as e:
            log.warning("released %s's ports: %s", plugin, e.reason)

    def _port_for(self, plugin: str, ports: PortAllocator, now: int, state: DevServerState) -> int:
        """A registering worker's port from `ports`: the one it uses `now` (a broker restart), else the plugin's
        (its lastError says why there is none)."""
        if now and ports.claim(plugin, now):
            self.registry.save()
            return now
        try:
            return self.allocate_port(plugin, ports)
        except CommandError as e:
            state.lastError = e.reason
            return 0
