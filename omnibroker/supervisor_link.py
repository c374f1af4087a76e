"""supervisord's XML-RPC, as the broker uses it: one program `omniworker-<id>` per plugin, added and removed at
run time the way `supervisorctl update` does it (write the include file, reloadConfig, addProcessGroup).

Calls are blocking (~0.4 ms each over the unix socket), so the broker runs them in a thread, one at a time.

A worker runs with MALLOC_ARENA_MAX=2: its threads (libzmq's I/O thread, grpc's, the Go watcher's) would each get a
malloc arena of their own, ~2 MB of a worker's USS for a few KB of allocations (docs/performance.md).
"""
from __future__ import annotations

import asyncio
import os
import select
import shlex
import sys
import xmlrpc.client

from . import protocol
from .files import write_atomic

PREFIX = "omniworker-"

PROGRAM_TEMPLATE = """\
; written by omnibroker for plugin {plugin}; removed with the plugin
[program:{name}]
command={command}
directory={directory}
autostart=true
autorestart=true
startsecs=1
startretries=20
stopsignal=TERM
stopwaitsecs=10
stopasgroup=true
killasgroup=true
redirect_stderr=true
environment=MALLOC_ARENA_MAX="2"
stdout_logfile={logdir}/{name}.log
stdout_logfile_maxbytes=1MB
stdout_logfile_backups=1
"""


def proxy(url: str) -> xmlrpc.client.ServerProxy:
    from supervisor.xmlrpc import SupervisorTransport    # lazy: only the broker and omnievents need it
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, url))


def wake_when_gone(pid: int, url: str) -> None:
    """Block until process `pid` has exited, then make one request to supervisord at `url`; omnievents runs it in a
    thread for each of our programs supervisord begins to stop. supervisord's loop reaps a dead child only when
    something wakes it (a request, a program's output) or after a second: a program's pipes close a moment before the
    kernel makes it a zombie, so supervisord may look too early and then sleep a whole second before it stops the
    next program (one at a time, at shutdown and `stop all`). A request made after the death makes its next look find
    it. Without pidfds (Linux < 5.3) it does nothing."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None           # gone already: wake it now
    except (AttributeError, OSError):
        return
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
    try:
        proxy(url).supervisor.getState()
    except Exception:       # noqa: BLE001 - supervisord gone: nothing to wake
        pass


def program_name(plugin: str) -> str:
    return PREFIX + plugin


def plugin_of(program: str) -> str | None:
    name = program.split(":")[-1]
    return name[len(PREFIX):] if name.startswith(PREFIX) else None


class SupervisorLink:
    def __init__(self, runtime_dir: str):
        self.include_dir = os.path.join(runtime_dir, "workers")
        self.log_dir = os.path.join(runtime_dir, "logs")
        os.makedirs(self.include_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        self.url = os.environ.get("SUPERVISOR_SERVER_URL") or f"unix://{runtime_dir}/supervisor.sock"
        self._lock = asyncio.Lock()

    async def call(self, fn, *, root: bool = False):
        """Run `fn(proxy.supervisor)` (`fn(proxy)` with root=True: for system.multicall) in a thread, serialised."""
        async with self._lock:
            return await asyncio.to_thread(lambda: fn(proxy(self.url) if root else proxy(self.url).supervisor))

    # --- include files -------------------------------------------------------------------------------------------
    def include_path(self, plugin: str) -> str:
        return os.path.join(self.include_dir, program_name(plugin) + ".conf")

    def write_include(self, plugin: str) -> bool:
        """Write the worker's program file; returns True when it changed."""
        command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "omniworker.worker", "--plugin", plugin))
        text = PROGRAM_TEMPLATE.format(plugin=plugin, name=program_name(plugin), command=command,
                                       directory=protocol.runtime_dir(), logdir=self.log_dir)
        path = self.include_path(plugin)
        try:
            with open(path) as f:
                if f.read() == text:
                    return False
        except OSError:
            pass
        write_atomic(path, text, fsync=False)
        return True

    def included_plugins(self) -> set[str]:
        return {n[len(PREFIX):-len(".conf")] for n in os.listdir(self.include_dir)
                if n.startswith(PREFIX) and n.endswith(".conf")}

    # --- what supervisorctl update does, for our programs only ----------------------------------------------------
    async def sync(self, plugins: set[str]) -> dict[str, list[str]]:
        """Make supervisord run exactly one worker program per plugin in `plugins`."""
        for plugin in plugins:
            self.write_include(plugin)
        for stale in self.included_plugins() - plugins:
            try:
                os.unlink(self.include_path(stale))
            except FileNotFoundError:
                pass
        return await self.call(_update_ours, root=True)

    def log_path(self, plugin: str) -> str:
        return os.path.join(self.log_dir, program_name(plugin) + ".log")

    def describe(self, plugin: str) -> str:
        """The worker as a person looks for it: its supervisord program and its log."""
        return f"worker program {program_name(plugin)} (log: {self.log_path(plugin)})"

    async def program_info(self, plugin: str) -> dict | None:
        """supervisord's getProcessInfo for the plugin's worker; None when it has no such program or does not answer."""
        try:
            return await self.call(lambda s: s.getProcessInfo(f"{program_name(plugin)}:{program_name(plugin)}"))
        except Exception:       # noqa: BLE001 - xmlrpc Fault, socket errors: "unknown" to every caller
            return None

    async def stopped_plugins(self) -> set[str]:
        """Plugins whose worker program someone stopped by hand."""
        infos = await self.call(lambda s: s.getAllProcessInfo())
        return {plugin_of(i["name"]) for i in infos if plugin_of(i["name"]) and stopped_by_hand(i)}

    async def start_worker(self, plugin: str) -> None:
        """Start a stopped (or given-up) worker program again; one already starting is left alone."""
        name = f"{program_name(plugin)}:{program_name(plugin)}"

        def go(s):
            try:
                s.startProcess(name, False)
            except xmlrpc.client.Fault as e:
                if "ALREADY_STARTED" not in e.faultString:
                    raise
        await self.call(go)

    async def restart_worker(self, plugin: str) -> None:
        """Stop and start the worker program (used when a worker is unresponsive)."""
        name = f"{program_name(plugin)}:{program_name(plugin)}"

        def go(s):
            try:
                s.stopProcess(name, True)
            except xmlrpc.client.Fault:
                pass
            s.startProcess(name, False)
        await self.call(go)


def stopped_by_hand(info: dict) -> bool:
    """Whether someone stopped the program (supervisorctl stop): STOPPED after it ran. A program just added is
    STOPPED too, until supervisord autostarts it a moment later; it never ran, so its `start` is 0."""
    return info.get("statename") == "STOPPED" and bool(info.get("start"))


def held_stopped(info: dict) -> bool:
    """Whether supervisord holds the program down and will not start it by itself: stopped by hand, or FATAL (it
    gave up restarting a program that kept exiting)."""
    return stopped_by_hand(info) or info.get("statename") == "FATAL"


def _update_ours(root: xmlrpc.client.ServerProxy) -> dict[str, list[str]]:
    s = root.supervisor
    added, changed, removed = s.reloadConfig()[0]
    done: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    for name in removed:
        if name.startswith(PREFIX):
            _stop_remove(s, name)
            done["removed"].append(name)
    for name in changed:
        if name.startswith(PREFIX):
            _stop_remove(s, name)
            done["changed"].append(name)
    done["added"] = [name for name in added if name.startswith(PREFIX)]
    # All groups in one request: supervisord then starts them in one pass of its loop, one fork after another, rather
    # than one per request with its request handling in between. Every page of its own that supervisord writes after a
    # fork is a copy the forked worker keeps (omniworker/preload.py); fewer writes between forks, fewer such copies.
    names = done["changed"] + done["added"]
    if names:
        # supervisord's multicall answers each call's value as is (not in a one-item array) or a fault struct
        for result in root.system.multicall([{"methodName": "supervisor.addProcessGroup", "params": [name]}
                                             for name in names]):
            if isinstance(result, dict) and "faultCode" in result:
                raise xmlrpc.client.Fault(result["faultCode"], result["faultString"])
    return done


def _stop_remove(s, name: str) -> None:
    try:
        s.stopProcessGroup(name, True)
    except xmlrpc.client.Fault:
        pass
    try:
        s.removeProcessGroup(name)
    except xmlrpc.client.Fault:
        pass
