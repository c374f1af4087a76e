"""Ports for managed plugins: one per plugin from a fixed range, stable across restarts. The broker holds two
allocators: Vite's ports (`[service] vite_ports`) and delve's debug ports (`[service] debug_ports`).

- The range is half-open: `range_start <= port < range_end` (Vite: 15173..15272 by default, 100 ports, as
  Omniview's; debug: 2345..2444, delve's customary 2345 first). Configurable.
- A port is handed out only after binding 127.0.0.1:port succeeds (SO_REUSEADDR off), so ports held by other
  programs are skipped. On Linux, a port refused only because of connections in TIME_WAIT left by our own Vite or
  delve (a second bind *with* SO_REUSEADDR succeeds, which Linux still refuses whenever anything listens on the port)
  counts as free: node (Vite) and Go (delve) bind their listeners with SO_REUSEADDR, so they can use it; without this the
  same plugin would lose its port for a minute after each stop.
- A plugin gets the port it had last time when that one is free ("preferred" ports, kept in `state`, which the
  broker persists: it is a plain JSON-serialisable dict, mutated in place). Fresh plugins avoid ports other plugins
  prefer while any other port is free.
- `release(plugin)` on stop; the preference stays. `forget(plugin)` on remove drops it too.
- The ports held now are in `state["held"]` too (plugin -> port), so the broker's view can be read from its state
  file; it starts empty at each broker start (running workers claim theirs again when they register).
- Exhaustion raises `CommandError(no_port, ...)` naming the range.
- `take_ports(plugin, wants, persist)`: a plugin's ports from several allocators and the state file write that
  records them, all or nothing (the broker's start takes a Vite port and a debug port this way).

Pure and synchronous: no I/O except the test binds, no threads, no locks (the broker calls it from its loop).
"""
from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Callable

from . import protocol

DEFAULT_RANGE_START = 15173
DEFAULT_RANGE_END = 15273          # exclusive
DEBUG_RANGE_START = 2345
DEBUG_RANGE_END = 2445             # exclusive
HOST = "127.0.0.1"


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nobody else holds host:port (a strict bind, SO_REUSEADDR off; TIME_WAIT tolerated on Linux)."""
    if _try_bind(host, port, reuse=False):
        return True
    if sys.platform.startswith("linux"):
        # EADDRINUSE with SO_REUSEADDR off but success with it on means: only TIME_WAIT / non-listening leftovers
        # (Linux refuses any bind that conflicts with a LISTEN socket regardless of SO_REUSEADDR).
        return _try_bind(host, port, reuse=True)
    return False


def _try_bind(host: str, port: int, reuse: bool) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1 if reuse else 0)
        s.bind((host, port))
        return True
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            return False
        raise
    finally:
        s.close()


class PortAllocator:
    """One port per plugin from [range_start, range_end). `state` is persisted by the broker (mutated in place)."""

    def __init__(self, range_start: int = DEFAULT_RANGE_START, range_end: int = DEFAULT_RANGE_END,
                 state: dict[str, Any] | None = None, what: str = "Vite"):
        if not (0 < range_start < range_end <= 65536):
            raise ValueError(f"invalid port range {range_start}-{range_end}")
        self.range_start = range_start
        self.range_end = range_end
        self.what = what                          # the ports' use, in messages ("Vite", "debug")
        self.state: dict[str, Any] = state if state is not None else {}
        pref = self.state.get("preferred")
        if not isinstance(pref, dict):
            pref = {}
        # keep only sane entries (the file may have been edited or come from an older version)
        self.state["preferred"] = {str(k): int(v) for k, v in pref.items()
                                   if isinstance(v, int) and not isinstance(v, bool)}
        self._assigned: dict[str, int] = {}       # plugin -> port, held now (rebuilt by claim() after a restart)
        self.state["held"] = self._assigned

    # --- queries -------------------------------------------------------------------------------------------
    @property
    def preferred(self) -> dict[str, int]:
        return self.state["preferred"]

    @property
    def assigned(self) -> dict[str, int]:
        """plugin -> port currently held (a copy)."""
        return dict(self._assigned)

    def port_of(self, plugin: str) -> int | None:
        return self._assigned.get(plugin)

    def in_range(self, port: int) -> bool:
        return self.range_start <= port < self.range_end

    def describe_range(self) -> str:
        return f"{self.range_start}-{self.range_end - 1}"

    # --- changes -------------------------------------------------------------------------------------------
    def allocate(self, plugin: str, avoid: frozenset[int] = frozenset()) -> int:
        """The plugin's port: the one it holds, else its last one if free, else the first free one; never one of
        `avoid` (ports found in use by another program since they were checked)."""
        held = self._assigned.get(plugin)
        if held is not None:
            return held
        taken = set(self._assigned.values()) | avoid
        last = self.preferred.get(plugin)
        if last is not None and self.in_range(last) and last not in taken and port_is_free(last):
            return self._take(plugin, last)
        others_pref = {p for k, p in self.preferred.items() if k != plugin}
        # First pass: ports nobody prefers; second pass: ports other (stopped) plugins had last time.
        for avoid in (True, False):
            for port in range(self.range_start, self.range_end):
                if port in taken or port == last or (avoid and port in others_pref):
                    continue
                if port_is_free(port):
                    return self._take(plugin, port)
        raise protocol.CommandError(
            protocol.ErrorCode.NO_PORT,
            f"no free port for plugin {plugin!r} in the {self.what} port range {self.describe_range()} "
            f"({len(taken)} held by omni plugins, the rest by other programs); stop a plugin or widen the range")

    def claim(self, plugin: str, port: int) -> bool:
        """Adopt a port a running worker already uses (e.g. after a broker restart); no bind check.

        False (and nothing changes) when another plugin holds it or it lies outside the range."""
        if not self.in_range(port):
            return False
        owner = next((k for k, p in self._assigned.items() if p == port), None)
        if owner is not None and owner != plugin:
            return False
        self._assigned.pop(plugin, None)
        self._take(plugin, port)
        return True

    def replace(self, plugin: str, taken: int) -> int:
        """The plugin's port `taken` turned out to be in use by another program: release it, allocate another."""
        if self._assigned.get(plugin) == taken:
            self._assigned.pop(plugin)
        return self.allocate(plugin, avoid=frozenset({taken}))

    def release(self, plugin: str) -> int | None:
        """Give the plugin's port back (on stop); it stays the plugin's preferred port. Returns it, if any."""
        return self._assigned.pop(plugin, None)

    def forget(self, plugin: str) -> None:
        """Release and drop the preference (on remove)."""
        self._assigned.pop(plugin, None)
        self.preferred.pop(plugin, None)

    def _take(self, plugin: str, port: int) -> int:
        self._assigned[plugin] = port
        self.preferred[plugin] = port
        return port


def take_ports(plugin: str, wants: tuple[tuple[PortAllocator, bool], ...],
               persist: Callable[[], None]) -> tuple[list[int], list[tuple[PortAllocator, int, int]]]:
    """Take the plugin's port from each allocator it wants (0 for the others), then `persist` (one state file write,
    which carries the preferences): all or nothing — a CommandError (no port, a failed write) puts every assignment
    and preference back. Returns the ports and the moves: (allocator, preferred port, new port) for each port that
    is not the plugin's last one because that one was not free."""
    before = [(ports, ports.port_of(plugin), ports.preferred.get(plugin)) for ports, _ in wants]
    try:
        taken = [ports.allocate(plugin) if want else 0 for ports, want in wants]
        persist()
    except protocol.CommandError:
        for ports, held, preferred in before:
            if held is None:
                ports.release(plugin)
            if preferred is None:
                ports.preferred.pop(plugin, None)
            else:
                ports.preferred[plugin] = preferred
        raise
    moved = [(ports, preferred, port) for (ports, held, preferred), port in zip(before, taken)
             if port and held is None and preferred not in (None, port)]
    return taken, moved
