"""omnibroker: one asyncio loop over three sockets.

- control ROUTER  (clients' REQ):  control.py: validate, look the command up in the table, run it in its own task;
                                   commands for a worker are forwarded and answered when it replies (or with
                                   `timeout`), so the loop never waits on a slow worker.
- workers ROUTER  (workers' DEALER, and omnievents): register, events, replies, build slots, supervisord
                                   process states.
- events XPUB     (subscribers):   everything goes out through EventBus (epoch/seq envelope).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

import msgspec
import zmq

from . import protocol
from .commands import Command
from .events import EventBus, bind, bind_xpub, write_epoch
from .heap import trim_loop
from .port_policy import PortPolicy
from .ports import PortAllocator
from .process import PidWatch, set_pdeathsig
from .protocol import CommandError, DevServerState, ErrorCode
from .config_watch import ConfigWatch
from .control import Control
from .registry import Registry, check_plugin_id, plugin_id_for_dir, storage_error, validate_plugin_dir
from .security import InsecureEndpoint
from .supervisor_link import SupervisorLink, held_stopped, plugin_of
from .workers import BuildSlots, WorkerLink, is_worker_of, liveness_loop
from .zstream import Stream

log = logging.getLogger("omnibroker")

REGISTER_WAIT = 20.0            # how long a command waits for a worker that is (re)starting


class Broker(PortPolicy):
    def __init__(self) -> None:
        self.runtime = protocol.ensure_runtime_dir()
        self.ctx = zmq.Context()
        self.registry = Registry(protocol.config_path(), os.path.join(self.runtime, "state.json"))
        service = self.registry.service
        self.ports = PortAllocator(service.vite_ports[0], service.vite_ports[1], self.registry.state.ports)
        self.debug_ports = PortAllocator(service.debug_ports[0], service.debug_ports[1],
                                         self.registry.state.debug_ports, what="debug")
        self.supervisor = SupervisorLink(self.runtime)
        self.control = self._bind(zmq.ROUTER, protocol.endpoint("control"), hwm=(protocol.CONTROL_RCVHWM,
                                  protocol.CONTROL_SNDHWM), maxmsgsize=protocol.MAX_REQUEST_BYTES)
        self.worker_sock = self._bind(zmq.ROUTER, protocol.endpoint("workers"))
        self.events = EventBus(bind_xpub(self.ctx, protocol.endpoint("events")))
        self.workers: dict[str, WorkerLink] = {}      # live workers only: a link leaves through _drop_link
        self.by_identity: dict[bytes, str] = {}        # the current incarnation's DEALER identity -> plugin
        self.registered: dict[str, asyncio.Event] = {}
        self.pending: dict[str, tuple[asyncio.Future, str]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.held: set[str] = set()        # plugins whose worker program was stopped by hand in supervisord
        self.supervisor_stopping: protocol.SupervisorState | None = None    # set by on_supervisor
        os.makedirs(protocol.alive_dir(), mode=0o700, exist_ok=True)
        write_epoch(self.events.epoch)          # after binding: workers may register now
        self.slots = BuildSlots(service.slots, self._grant_slot)
        self.dir_errors: dict[str, str] = {}        # plugin -> "its directory does not exist" (see check_plugin_dir)
        self.config = ConfigWatch(self)
        for plugin in self.registry.plugins:
            self.events.states[plugin] = self._initial_state(plugin)
        if self.registry.config_error:
            log.error("configuration: %s", self.registry.config_error)

    def _bind(self, kind: int, endpoint: str, hwm: tuple[int, int] = (100_000, 100_000),
              maxmsgsize: int = -1) -> zmq.Socket:
        """A ROUTER; `hwm` (receive, send) is per peer: a peer that does not read loses messages beyond the send HWM,
        one that sends faster than the broker reads waits; a peer sending a frame over `maxmsgsize` bytes is
        disconnected by libzmq before the broker reads anything of it."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.setsockopt(zmq.RCVHWM, hwm[0])
        sock.setsockopt(zmq.SNDHWM, hwm[1])
        sock.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
        bind(sock, endpoint)
        return sock

    def _initial_state(self, plugin: str) -> DevServerState:
        return DevServerState(pluginID=plugin, devPath=self.registry.plugins[plugin].spec.path)

    # --- state ---------------------------------------------------------------------------------------------------
    def state_of(self, plugin: str) -> DevServerState:
        state = self.events.states.get(plugin)
        if state is None:
            state = self.events.states[plugin] = self._initial_state(plugin)
        return state

    def _set_worker_status(self, plugin: str, status: str, **extra: Any) -> None:
        state = msgspec.structs.replace(self.state_of(plugin), workerStatus=status, **extra)
        self.events.status(state)

    async def change_mode(self, cmd: Command, props: dict[str, Any], mode: protocol.Mode | None, *,
                          only_from: protocol.Mode | None = None) -> Any:
        """The policy of the mode commands, in one place: the desired state (persisted), the Vite and debug ports,
        then the worker. `mode`: "managed" (start), "external" (attach), "idle" (stop; with `only_from="external"`:
        detach, which leaves a managed plugin managed), None: keep it (restart). `debug` (start, restart) is recorded
        with the desired state: the worker runs the Go plugin under delve when it is given a debug port."""
        plugin = props["plugin"]
        debug = props.pop("debug", None)
        if mode == "managed":
            check_plugin_id(plugin)
            if "path" in props:         # start --path: register the directory first
                path = validate_plugin_dir(props.pop("path"))
                await self.add_plugin(plugin_id_for_dir(plugin, path), path, None)
        desired = self.registry.get(plugin).desired
        if mode in ("managed", None) and (missing := self.check_plugin_dir(plugin)):
            raise CommandError(ErrorCode.NO_PLUGIN_DIR, missing)
        if mode == "managed":
            desired = protocol.Desired(mode="managed", vite=props.get("vite", desired.vite),
                                       go=props.get("go", desired.go), debug=desired.debug if debug is None else debug)
            props.update(vite=desired.vite, go=desired.go)
            vite_port, debug_port = self.set_desired(plugin, desired)
            if not debug_port:
                self.debug_ports.release(plugin)        # debug mode off: the port is free for others (preferred still)
            return await self.forward(cmd, props, vite_port=vite_port, debug_port=debug_port)
        if mode is None:
            if debug is not None and desired.mode == "managed" and debug != desired.debug:
                desired = msgspec.structs.replace(desired, debug=debug)
                self.registry.set_desired(plugin, desired)
            want_vite, want_debug = (want for _, want in self._wanted_ports(desired))
            vite_port = 0
            if want_vite:
                try:
                    vite_port = self.allocate_port(plugin)
                except CommandError as e:       # none left: the worker reports it, as for `start`
                    if e.code != ErrorCode.NO_PORT:
                        raise
            debug_port = self.allocate_port(plugin, self.debug_ports) if want_debug else 0
            if not debug_port:
                self.debug_ports.release(plugin)
            return await self.forward(cmd, props, vite_port=vite_port, debug_port=debug_port)
        if only_from is not None:
            if desired.mode == only_from:
                self.registry.set_mode(plugin, mode)
            return await self.forward(cmd, props)
        self.registry.set_mode(plugin, mode)
        if mode == "external":
            self.release_port(plugin)
            return await self.forward(cmd, props)
        try:
            if await self.held_state(plugin):       # its worker program is held stopped: nothing runs, say so
                state = msgspec.structs.replace(self.state_of(plugin), mode="idle")
                self.events.status(state)
                return protocol.to_builtins(state)
            return await self.forward(cmd, props)
        finally:
            # Also when the worker did not answer: it stops Vite or is restarted idle (worker.py, SERIAL_BUDGET).
            self.release_port(plugin)

    def check_plugin_dir(self, plugin: str) -> str:
        """"" when the plugin's source directory exists; else the error, which becomes the plugin's `lastError`
        (kept over its worker's status events until the directory is there again) and an error event."""
        path = self.registry.get(plugin).spec.path
        if os.path.isdir(path):
            self.dir_errors.pop(plugin, None)
            return ""
        message = self.dir_errors[plugin] = f"the plugin directory {path} does not exist"
        self.events.status(msgspec.structs.replace(self.state_of(plugin), lastError=message))
        self.events.publish(protocol.ERROR, protocol.ErrorPayload(
            pluginID=plugin, errors=[protocol.BuildError(file=path, message=message)]), plugin)
        return message

    # --- plugins and their worker programs -------------------------------------------------------------------------
    async def sync_programs(self) -> None:
        try:
            await self.supervisor.sync(set(self.registry.plugins))
        except (OSError, msgspec.MsgspecError, Exception) as e:     # noqa: BLE001 - report any XML-RPC failure
            raise CommandError(ErrorCode.SUPERVISOR, f"supervisord at {self.supervisor.url} failed: {e}") from None

    async def add_plugin(self, plugin: str, path: str, settings: dict | None) -> None:
        """Register or re-point a plugin. Its program file and the state file are written before anything changes:
        when either write fails (a full runtime dir), the plugin is as it was and the error says why."""
        if settings is None:        # `start --path`: keep the settings a plugin already has
            settings = self.registry.plugins[plugin].spec.settings if plugin in self.registry.plugins else {}
        include = self.supervisor.include_path(plugin)
        had_include = os.path.exists(include)
        try:
            self.supervisor.write_include(plugin)
        except OSError as e:
            raise storage_error(e, include) from None
        try:
            _, changed = self.registry.add(plugin, path, settings)
        except CommandError:
            if not had_include:
                with contextlib.suppress(OSError):
                    os.unlink(include)
            raise
        if changed or plugin not in self.events.states:
            self._respec(plugin)
        await self.sync_programs()

    def _respec(self, plugin: str) -> None:
        """A plugin's spec is new: fresh state, and a running worker restarts to register with the new spec."""
        self.dir_errors.pop(plugin, None)
        self.events.states[plugin] = self._initial_state(plugin)
        link = self.workers.get(plugin)
        if link is not None:
            self._send_worker(link.identity, protocol.K_COMMAND,
                              protocol.encode(protocol.Request(id="respawn", command="exit")))
        self._set_worker_status(plugin, "starting")

    async def remove_plugin(self, plugin: str) -> None:
        """Forget a plugin: the state file first (a failed write changes nothing), then memory and supervisord."""
        self.registry.remove(plugin)
        await self._drop_plugin(plugin)

    async def _drop_plugin(self, plugin: str) -> None:
        """Everything but the registry: ports, liveness file, worker program, link, pending requests, state."""
        self.ports.forget(plugin)
        self.debug_ports.forget(plugin)
        self.dir_errors.pop(plugin, None)
        with contextlib.suppress(OSError):
            os.unlink(protocol.alive_path(plugin))
        await self.sync_programs()
        self._drop_link(plugin, "the plugin was removed")
        self._set_worker_status(plugin, "none", registered=False, mode="idle", grpcConnected=False, pluginPid=0,
                                workerPid=0)
        self.events.forget(plugin)

    async def ensure_worker(self, plugin: str, run: bool = False) -> WorkerLink:
        """The plugin's live worker, waiting (REGISTER_WAIT) for one that is starting. A worker program that
        supervisord holds stopped (supervisorctl stop, or FATAL) is not waited for: `run` starts it again through
        XML-RPC, otherwise the answer is at once."""
        link = self.workers.get(plugin)
        if link is not None:
            return link
        event = self.registered.setdefault(plugin, asyncio.Event())
        event.clear()
        if not os.path.exists(self.supervisor.include_path(plugin)):
            await self.sync_programs()
        state = await self.held_state(plugin)
        if state:
            if not run:
                raise CommandError(ErrorCode.WORKER_UNAVAILABLE,
                                   f"the {self.supervisor.describe(plugin)} is {state} in supervisord"
                                   f"{' (stopped by hand)' if state == 'STOPPED' else ' (it kept exiting)'}; "
                                   f"`omnictl start {plugin}` runs it again")
            log.info("starting the held %s (%s) for a command", self.supervisor.describe(plugin), state)
            self.held.discard(plugin)
            self._set_worker_status(plugin, "starting")
            await self.supervisor.start_worker(plugin)
        try:
            await asyncio.wait_for(event.wait(), REGISTER_WAIT)
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.WORKER_UNAVAILABLE,
                               f"the {self.supervisor.describe(plugin)} did not register within "
                               f"{REGISTER_WAIT:.0f}s") from None
        return self.workers[plugin]

    async def held_state(self, plugin: str) -> str:
        """supervisord's state of the plugin's worker program when it holds it down (STOPPED by hand, or FATAL) and
        no worker of it is alive; "" otherwise."""
        if plugin in self.workers:
            return ""
        info = await self.supervisor.program_info(plugin)
        return info["statename"] if info is not None and held_stopped(info) else ""

    async def forward(self, cmd: Command, props: dict[str, Any], *, vite_port: int = 0, debug_port: int = 0) -> Any:
        """Run `cmd` in the plugin's worker (its `work`) with `props` and what the broker decided (protocol.Forwarded);
        its result, or its error as a CommandError."""
        plugin = props["plugin"]
        self.registry.get(plugin)
        forwarded = protocol.to_builtins(protocol.Forwarded(**props, vitePort=vite_port, debugPort=debug_port))
        link = await self.ensure_worker(plugin, run=cmd.starts_worker)
        rid = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = (fut, plugin)
        try:
            self._send_worker(link.identity, protocol.K_COMMAND,
                              protocol.encode(protocol.Request(id=rid, command=cmd.name, properties=forwarded)))
            reply = await asyncio.wait_for(fut, cmd.timeout)
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.TIMEOUT,
                               f"the {self.supervisor.describe(plugin)} did not answer {cmd.name!r} within "
                               f"{cmd.timeout:.0f}s") from None
        finally:
            self.pending.pop(rid, None)
        if reply.status != "ok":
            raise CommandError(reply.code or ErrorCode.INTERNAL, reply.reason or "the worker failed")
        return reply.result

    def _fail_pending(self, plugin: str, why: str) -> None:
        for fut, owner in list(self.pending.values()):
            if owner == plugin and not fut.done():
                fut.set_result(protocol.error_reply(None, ErrorCode.WORKER_UNAVAILABLE,
                                                    f"the {self.supervisor.describe(plugin)} went away: {why}"))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- worker socket ---------------------------------------------------------------------------------------------
    def _send_worker(self, identity: bytes, kind: bytes, body: bytes) -> None:
        if not self.worker_stream.send([identity, kind, body]):
            log.warning("could not reach worker %r", identity)

    def _grant_slot(self, identity: bytes, token: str) -> None:
        self._send_worker(identity, protocol.K_TOKEN, protocol.encode(protocol.Token(op="granted", id=token)))

    def on_worker(self, frames: list[bytes]) -> None:
        if len(frames) < 3:
            return
        handler = self.worker_handlers.get(frames[1])
        if handler is None:
            return
        try:
            handler(frames[0], frames[2:])
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
            log.warning("bad %s message from %r: %s", frames[1], frames[0], e)
        except Exception:       # noqa: BLE001 - one bad worker message must not stop the loop
            log.exception("worker message %s failed", frames[1])

    def on_register(self, identity: bytes, body: list[bytes]) -> None:
        reg = protocol.decode_register(body[0])
        record = self.registry.plugins.get(reg.plugin)
        if record is None:
            log.warning("worker for unknown plugin %r registered; ignoring", reg.plugin)
            return
        link = self.workers.get(reg.plugin)
        if link is not None and link.identity == identity:
            self._seen(reg.plugin, link, time.monotonic())      # registering again (no welcome yet): same process
        else:
            if link is not None:
                self._drop_link(reg.plugin, "a new worker process registered")
            link = self.workers[reg.plugin] = WorkerLink(identity, reg.pid)
            self.by_identity[identity] = reg.plugin
            self._watch_pid(reg.plugin, link)
        self.held.discard(reg.plugin)
        state = reg.state
        state.workerStatus, state.workerPid = "up", reg.pid
        state.devPath = state.devPath or record.spec.path    # a new worker learns its path in the welcome
        desired = record.desired
        if desired.mode == "managed" and (missing := self.check_plugin_dir(reg.plugin)):
            desired = msgspec.structs.replace(desired, mode="idle")     # nothing to run; `start` checks again
            state.lastError = missing
        vite_port, debug_port = (self._port_for(reg.plugin, ports, now, state) if want else 0
                                 for (ports, want), now in zip(self._wanted_ports(desired),
                                                               (state.vitePort, state.debugPort)))
        self.events.status(state)
        welcome = protocol.Welcome(epoch=self.events.epoch, spec=record.spec, desired=desired,
                                   vitePort=vite_port, debugPort=debug_port)
        self._send_worker(identity, protocol.K_WELCOME, protocol.encode(welcome))
        if self.supervisor_stopping:
            self._send_worker(identity, protocol.K_SUPERVISOR, protocol.encode(self.supervisor_stopping))
        self.registered.setdefault(reg.plugin, asyncio.Event()).set()

    def _watch_pid(self, plugin: str, link: WorkerLink) -> None:
        """Notice a worker's death the moment it happens (pidfd), not at supervisord's next reap (up to 1 s). Without
        pidfds (another pid namespace, an old kernel) supervisord's event and the liveness loop still tell."""
        def died() -> None:
            if self.workers.get(plugin) is link:
                self._worker_gone(plugin, "the worker process exited")
        link.watch = PidWatch(link.pid, None, died, thread_fallback=False)
        link.watch.start()

    def _drop_link(self, plugin: str, why: str) -> None:
        """The one way a worker leaves the broker's books: its link, its identity, its pid watch, its build slots and
        the requests waiting for its answer (answered `worker_unavailable`, `why`). Idempotent."""
        link = self.workers.pop(plugin, None)
        if link is not None:
            self.by_identity.pop(link.identity, None)
            if link.watch is not None:
                link.watch.stop()
            self.slots.release_worker(link.identity)
        self._fail_pending(plugin, why)

    def _touch(self, identity: bytes) -> str | None:
        """Any message from a worker is a sign of life."""
        plugin = self.by_identity.get(identity)
        if plugin is not None:
            self._seen(plugin, self.workers[plugin], time.monotonic())
        return plugin

    def _seen(self, plugin: str, link: WorkerLink, now: float) -> None:
        link.last_seen = now
        if link.lost_since:
            link.lost_since = 0.0
            self._set_worker_status(plugin, "up")

    def on_event(self, identity: bytes, body: list[bytes]) -> None:
        plugin = self._touch(identity)
        if plugin is None or len(body) < 2:
            return
        topic = body[0].decode()
        if topic == protocol.STATUS and plugin in self.dir_errors:
            state = protocol.decode_state(body[1])
            if state.pluginID == plugin:
                self.events.status(msgspec.structs.replace(
                    state, lastError=state.lastError or self.dir_errors[plugin]))
            return
        self.events.worker_status(topic, body[1], plugin)

    def on_reply(self, identity: bytes, body: list[bytes]) -> None:
        self._touch(identity)
        reply = protocol.decode_reply(body[0])
        entry = self.pending.get(str(reply.id))
        if entry is not None and not entry[0].done():
            entry[0].set_result(reply)

    def on_token(self, identity: bytes, body: list[bytes]) -> None:
        self._touch(identity)
        token = protocol.decode_token(body[0])
        if token.op == "acquire":
            self.slots.acquire(token.id, identity)
        elif token.op == "release":
            self.slots.release(token.id)

    def on_procstate(self, identity: bytes, body: list[bytes]) -> None:
        ev = protocol.decode_procstate(body[0])
        plugin = plugin_of(ev.name)
        if plugin is None or plugin not in self.registry.plugins:
            return
        link = self.workers.get(plugin)
        # The listener and the worker race: a worker may register before its STARTING arrives, and a new
        # incarnation may register before the old one's EXITED does. Only news about the current one counts.
        if link is not None and (ev.state == "STARTING" or (ev.pid and ev.pid != link.pid)):
            return
        if ev.state == "STARTING":
            self.held.discard(plugin)
            self._set_worker_status(plugin, "starting")
        elif ev.state == "STOPPING":    # on purpose: its death (pidfd, then STOPPED) is "stopped", not "exited"
            self.held.add(plugin)
        elif ev.state == "STOPPED":
            self.held.add(plugin)
            self._worker_gone(plugin, f"supervisord reports {ev.state}")
        elif ev.state in ("EXITED", "BACKOFF", "FATAL"):
            self._worker_gone(plugin, f"supervisord reports {ev.state}")

    def on_supervisor(self, identity: bytes, body: list[bytes]) -> None:
        """supervisord began to stop every program (omnievents), one at a time: told now, every worker stops its parts
        at once, in parallel, and exits at once when supervisord reaches it. A worker registering later is told too."""
        ev = protocol.decode_supervisor(body[0])
        if ev.state == "STOPPING" and self.supervisor_stopping is None:
            self.supervisor_stopping = ev
            log.info("supervisord is stopping: telling %d workers to stop their parts now", len(self.workers))
            for link in self.workers.values():
                self._send_worker(link.identity, protocol.K_SUPERVISOR, body[0])

    def _worker_gone(self, plugin: str, why: str) -> None:
        """The worker died (pidfd, supervisord): drop it and say so."""
        self._drop_link(plugin, why)
        state = self.state_of(plugin)
        active = {"starting", "building", "running", "ready"}
        self._set_worker_status(
            plugin, "stopped" if plugin in self.held else "exited", grpcConnected=False, pluginPid=0, workerPid=0,
            viteStatus="stopped" if state.viteStatus in active else state.viteStatus,
            goStatus="stopped" if state.goStatus in active else state.goStatus)

    def _unresponsive(self, plugin: str, link: WorkerLink, silent: float) -> None:
        """Lost for UNRESPONSIVE_RESTART: drop it and kill it; supervisord starts a new one."""
        self._drop_link(plugin, "unresponsive")
        log.warning("worker for %s unresponsive for %.0fs: restarting it", plugin, silent)
        self._spawn(self._restart_worker(plugin, link.pid))

    async def _restart_worker(self, plugin: str, pid: int) -> None:
        try:
            if not is_worker_of(pid, plugin):  # a pid we were told, not one we started: kill only our worker
                raise ProcessLookupError(pid)
            os.kill(pid, signal.SIGKILL)    # a stopped (SIGSTOP) process ignores TERM; supervisord restarts it
        except OSError:
            try:
                await self.supervisor.restart_worker(plugin)
            except Exception as e:      # noqa: BLE001
                log.warning("could not restart worker %s: %s", plugin, e)

    # --- run -------------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.worker_handlers = {
            protocol.K_REGISTER: self.on_register, protocol.K_EVENT: self.on_event, protocol.K_REPLY: self.on_reply,
            protocol.K_TOKEN: self.on_token, protocol.K_PROCSTATE: self.on_procstate, protocol.K_PORT: self.on_port,
            protocol.K_SUPERVISOR: self.on_supervisor}
        self.control_server = Control(self, self.control)
        self.worker_stream = Stream(self.worker_sock, self.on_worker)
        self.events_stream = Stream(self.events.socket, lambda frames: None)   # drain (un)subscriptions
        self._spawn(self._initial_sync())
        liveness = liveness_loop(self.workers, self._seen, lambda plugin: self._set_worker_status(plugin, "lost"),
                                 self._unresponsive)
        streams = (self.control_server.stream, self.worker_stream, self.events_stream)
        background = [asyncio.create_task(liveness),
                      asyncio.create_task(trim_loop(activity=lambda: sum(s.received for s in streams)))]
        self.config.start()
        await stop.wait()
        self.config.stop()
        for task in background:
            task.cancel()
        for stream in (self.control_server, self.worker_stream, self.events_stream):
            stream.close()
        self.ctx.destroy(linger=0)

    async def _initial_sync(self) -> None:
        """Make supervisord run a worker for every registered plugin (retrying while it is not up yet)."""
        for attempt in range(50):
            try:
                await self.sync_programs()
                held = await self.supervisor.stopped_plugins()
            except CommandError as e:
                if attempt == 0:
                    log.warning("%s; retrying", e.reason)
                await asyncio.sleep(0.2)
                continue
            except Exception as e:      # noqa: BLE001 - XML-RPC failure: the events will tell
                log.warning("could not list supervisord's stopped programs: %s", e)
                return
            for plugin in held & set(self.registry.plugins):     # held before this broker started: say so
                if plugin not in self.workers:
                    self.held.add(plugin)
                    self._set_worker_status(plugin, "stopped")
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnibroker", description="omni broker (run by supervisord)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s omnibroker %(levelname)s %(message)s")
    set_pdeathsig(signal.SIGTERM)       # die with supervisord, even when it is SIGKILLed
    try:
        broker = Broker()
    except InsecureEndpoint as e:
        log.error("refusing to start: %s", e)
        return 2
    except zmq.ZMQError as e:
        log.error("cannot bind: %s", e)
        return 1
    log.info("epoch %s; control %s; events %s; workers %s", broker.events.epoch, protocol.endpoint("control"),
             protocol.endpoint("events"), protocol.endpoint("workers"))
    asyncio.run(broker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
