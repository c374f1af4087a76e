"""omniworker --plugin <id>: one plugin's worker, run by supervisord as program `omniworker-<id>`.

The broker link: register (with the worker's real state, so a restarted broker learns it), commands in, replies and
events out, build slots. Liveness without messages (protocol.py, "Worker link"): every second the worker touches its
alive file and reads the broker's epoch file; a new epoch there means the broker restarted: register again. The
plugin's spec (path, settings) and desired state arrive in the broker's welcome.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import uuid
from typing import Any, AsyncIterator

# Before grpc is imported anywhere in this process: its fork handlers would log on every child spawn.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import msgspec  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402

from omnibroker import protocol  # noqa: E402
from omnibroker.commands import COMMANDS  # noqa: E402
from omnibroker.process import set_pdeathsig, watch_children_with_pidfds  # noqa: E402
from omnibroker.protocol import CommandError, DevServerState, ErrorCode  # noqa: E402
from omnibroker.security import secure_client  # noqa: E402
from omnibroker.settings import SettingsError  # noqa: E402

from .children import ChildRegistry, reap_adopted, set_child_subreaper
from .context import PluginContext
from .devserver import DevServer
from .runtime import Background

log = logging.getLogger("omniworker")


# The commands the worker runs are the broker's table (omnibroker/commands): each forwarded Command's `work`.
# `exclusive` ones change the mode: they run one at a time, each holding the lock at most SERIAL_BUDGET seconds
# (inside the broker's 30 s): one that overruns is abandoned, answered `timeout`, and the worker exits with
# ABANDONED_EXIT after killing its children, so supervisord starts a new one that applies the desired state.
SERIAL_BUDGET = 20.0
PORT_SWAP_TIMEOUT = 5.0         # s to wait for the broker's answer to a PortSwap
ABANDONED_EXIT = 75


class BrokerLink:
    """The worker's DEALER to the broker; implements context.EventSink."""

    def __init__(self, plugin: str):
        self.plugin = plugin
        self.zctx = zmq.asyncio.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, f"w:{plugin}:{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        secure_client(self.sock, protocol.endpoint("workers"))
        self.sock.connect(protocol.endpoint("workers"))
        self.slots: dict[str, asyncio.Future] = {}
        self.port_swaps: dict[str, asyncio.Future] = {}

    def send(self, kind: bytes, *body: bytes) -> None:
        try:
            self.sock.send_multipart([kind, *body], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass        # broker gone and queue full: the state goes out again at re-registration

    def publish(self, topic: str, payload: Any) -> None:
        self.send(protocol.K_EVENT, topic.encode(), protocol.encode(payload))

    @contextlib.asynccontextmanager
    async def build_slot(self) -> AsyncIterator[None]:
        token = uuid.uuid4().hex
        fut = self.slots[token] = asyncio.get_running_loop().create_future()
        self.send(protocol.K_TOKEN, protocol.encode(protocol.Token(op="acquire", id=token)))
        try:
            # A broker restart forgets waiting tokens; ask again rather than wait forever.
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(fut), 5.0)
                    break
                except asyncio.TimeoutError:
                    self.send(protocol.K_TOKEN, protocol.encode(protocol.Token(op="acquire", id=token)))
            yield
        finally:
            self.slots.pop(token, None)
            self.send(protocol.K_TOKEN, protocol.encode(protocol.Token(op="release", id=token)))

    async def other_port(self, kind: str, taken: int) -> int:
        """The broker's next free port of `kind` ("vite", "debug") for this plugin, `taken` being in use by another
        program."""
        swap_id = uuid.uuid4().hex
        fut = self.port_swaps[swap_id] = asyncio.get_running_loop().create_future()
        self.send(protocol.K_PORT, protocol.encode(protocol.PortSwap(id=swap_id, kind=kind, taken=taken)))
        try:
            answer: protocol.PortSwap = await asyncio.wait_for(fut, PORT_SWAP_TIMEOUT)
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.NO_PORT, f"the broker did not answer within {PORT_SWAP_TIMEOUT:g}s when "
                                                  f"asked for another {kind} port") from None
        finally:
            self.port_swaps.pop(swap_id, None)
        if not answer.port:
            raise CommandError(ErrorCode.NO_PORT, answer.error or f"no other {kind} port was given")
        return answer.port


def _read_small(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(256).strip()
    except OSError:
        return ""


class Worker:
    def __init__(self, plugin: str):
        self.plugin = plugin
        self.link = BrokerLink(plugin)
        self.devserver: DevServer | None = None
        self.epoch = ""
        self.serial = asyncio.Lock()
        self.holder = ""                # the command holding `serial`
        self.abandoned = ""             # set when a command overran: the worker is on its way out
        self.closing = ""               # why the parts were stopped for good (stop_parts): mode changes are refused
        self.parts_stopped: asyncio.Future | None = None
        self.stop_event = asyncio.Event()
        self.background = Background()           # commands and welcomes being served

    @property
    def state(self) -> DevServerState:
        if self.devserver is not None:
            return self.devserver.ctx.state
        return DevServerState(pluginID=self.plugin, workerPid=os.getpid(), workerStatus="up")

    def register(self) -> None:
        reg = protocol.Register(plugin=self.plugin, pid=os.getpid(), state=self.state)
        self.link.send(protocol.K_REGISTER, protocol.encode(reg))

    async def heartbeat_loop(self) -> None:
        alive = protocol.alive_path(self.plugin)
        os.makedirs(protocol.alive_dir(), mode=0o700, exist_ok=True)
        while True:
            try:
                os.utime(alive)
            except FileNotFoundError:
                os.close(os.open(alive, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            except OSError as e:
                log.warning("cannot touch %s (%s): the broker will take this worker for lost", alive, e)
            reap_adopted()          # orphans of our children that died on their own
            broker_epoch = _read_small(protocol.epoch_path())
            if not self.epoch:
                self.register()         # again each second until welcomed (the broker may not be up yet)
            elif broker_epoch and broker_epoch != self.epoch:
                log.info("broker restarted (epoch %s): registering again", broker_epoch)
                self.epoch = ""
                self.register()
            await asyncio.sleep(protocol.HEARTBEAT_INTERVAL)

    async def recv_loop(self) -> None:
        while True:
            frames = await self.link.sock.recv_multipart()
            kind, body = frames[0], frames[1:]
            try:
                if kind == protocol.K_WELCOME:
                    await self.on_welcome(protocol.decode_welcome(body[0]))
                elif kind == protocol.K_COMMAND:
                    self.background.spawn(self.on_command(msgspec.json.decode(body[0], type=protocol.Request)))
                elif kind == protocol.K_PORT:
                    answer = protocol.decode_portswap(body[0])
                    fut = self.link.port_swaps.get(answer.id)
                    if fut is not None and not fut.done():
                        fut.set_result(answer)
                elif kind == protocol.K_SUPERVISOR:
                    if protocol.decode_supervisor(body[0]).state == "STOPPING":
                        self.stop_parts("supervisord is stopping")
                elif kind == protocol.K_TOKEN:
                    token = protocol.decode_token(body[0])
                    fut = self.link.slots.get(token.id)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.warning("bad message %r from broker: %s", kind, e)

    async def on_welcome(self, welcome: protocol.Welcome) -> None:
        self.epoch = welcome.epoch
        if self.devserver is None:
            try:
                ctx = PluginContext(welcome.spec, self.link)
                refused = ""
            except SettingsError as e:      # the broker validates settings first: a broker of another version
                ctx = PluginContext(msgspec.structs.replace(welcome.spec, settings={}), self.link)
                refused = f"[plugins.{self.plugin}] {e}: running with the default settings"
            self.devserver = DevServer(ctx)
            ctx.publish_status()
            if refused:
                ctx.log("manager", "error", refused)
                ctx.mode.set_error(refused)
        if not self.closing:
            self.background.spawn(self._apply(welcome))

    async def _apply(self, welcome: protocol.Welcome) -> None:
        try:
            await self.serially("apply", lambda: self.devserver.apply(welcome.desired, welcome.vitePort,
                                                                         welcome.debugPort))
        except CommandError as e:
            self.devserver.ctx.mode.set_error(e.reason)
        except Exception as e:      # noqa: BLE001 - report, keep serving
            log.exception("applying the desired state failed")
            self.devserver.ctx.mode.set_error(f"{type(e).__name__}: {e}")

    async def serially(self, name: str, run) -> Any:
        """Run `run()` holding the worker's lock for at most SERIAL_BUDGET s, after waiting for it at most as long."""
        if self.abandoned:
            raise CommandError(ErrorCode.WORKER_UNAVAILABLE, f"the worker is restarting: {self.abandoned}")
        if self.closing:
            raise CommandError(ErrorCode.WORKER_UNAVAILABLE, f"the worker is stopping: {self.closing}")
        try:
            await asyncio.wait_for(self.serial.acquire(), SERIAL_BUDGET)
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.TIMEOUT, f"{name}: not run: the worker was still running "
                                                  f"{self.holder or 'an earlier command'} after {SERIAL_BUDGET:g}s"
                               ) from None
        self.holder = name
        try:
            task = asyncio.ensure_future(run())
            done, _ = await asyncio.wait({task}, timeout=SERIAL_BUDGET)
            if not done:
                self.abandon(f"{name} did not finish within {SERIAL_BUDGET:g}s", task)
                raise CommandError(ErrorCode.TIMEOUT, f"{self.abandoned}: abandoned; the worker restarts through "
                                                      "supervisord and brings the plugin back to its desired state")
            return task.result()
        finally:
            self.holder = ""
            self.serial.release()

    def abandon(self, why: str, task: asyncio.Future) -> None:
        """A command overran: its parts are in no known state. Stop it and let the worker exit (see SERIAL_BUDGET)."""
        log.error("%s: abandoning it; the worker exits so that supervisord restarts it", why)
        self.abandoned = why
        task.cancel()
        self.stop_event.set()

    async def on_command(self, req: protocol.Request) -> None:
        try:
            if req.command == "exit":       # the broker re-pointed this plugin: supervisord restarts us
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if self.devserver is None:
                raise CommandError(ErrorCode.WORKER_UNAVAILABLE, "the worker has not been welcomed by the broker yet")
            cmd = COMMANDS.get(req.command)
            if cmd is None or not cmd.forward:
                raise CommandError(ErrorCode.UNKNOWN_COMMAND, f"the worker does not run {req.command!r}")
            try:
                props = protocol.decode_forwarded(req.properties)
            except msgspec.ValidationError as e:
                raise CommandError(ErrorCode.BAD_PROPERTY, f"{req.command}: {e}") from None
            if cmd.exclusive:
                result = await self.serially(cmd.name, lambda: cmd.work(self.devserver, props))
            else:
                result = await cmd.work(self.devserver, props)
            if result is None:
                result = protocol.to_builtins(self.devserver.ctx.state)
            reply = protocol.ok_reply(req.id, result)
        except CommandError as e:
            reply = protocol.error_reply(req.id, e.code, e.reason)
        except Exception as e:      # noqa: BLE001 - a failing command is an error reply, never a dead worker
            log.exception("command %s failed", req.command)
            reply = protocol.error_reply(req.id, ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")
        self.link.send(protocol.K_REPLY, protocol.encode(reply))

    def stop_parts(self, why: str) -> asyncio.Future:
        """Stop the plugin's parts for good, once (a second call gets the same task); from then on commands that
        change the mode are refused. On SIGTERM, and earlier when supervisord begins to stop every program
        (K_SUPERVISOR STOPPING): then every worker stops its parts at the same time and the worker, still linked
        and heartbeating, exits at once when supervisord's TERM reaches it."""
        if self.parts_stopped is None:
            self.closing = why
            log.info("stopping the parts: %s", why)
            self.parts_stopped = asyncio.ensure_future(self._stop_parts())
        return self.parts_stopped

    async def _stop_parts(self) -> None:
        if self.devserver is not None and not self.abandoned:
            try:
                await asyncio.wait_for(self.devserver.shutdown(), 8.0)
            except Exception:       # noqa: BLE001
                log.exception("shutdown failed")
        if self.devserver is not None:
            self.devserver.ctx.publish_status()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit code 0) or an abandoned command (ABANDONED_EXIT)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        tasks = [asyncio.create_task(self.recv_loop()), asyncio.create_task(self.heartbeat_loop())]
        await self.stop_event.wait()
        log.info("stopping")
        await self.stop_parts(self.abandoned or "the worker is stopping")
        # whatever a stop did not reach (an abandoned command's parts, escaped descendants) dies now
        killed = ChildRegistry(self.plugin).reap_leftovers()
        if killed:
            log.warning("killed left-over processes: %s", killed)
        for task in tasks:
            task.cancel()
        self.link.zctx.destroy(linger=1000)
        return ABANDONED_EXIT if self.abandoned else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omniworker", description="one plugin's worker (run by supervisord)")
    parser.add_argument("--plugin", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s omniworker[{args.plugin}] %(levelname)s %(message)s")
    if not protocol.valid_plugin_id(args.plugin):
        log.error("invalid plugin id %r", args.plugin)
        return 2
    set_pdeathsig(signal.SIGTERM)   # supervisord SIGKILLed: stop our children cleanly, then go
    set_child_subreaper()           # our children's orphans come to us (children.py)
    killed = ChildRegistry(args.plugin).reap_leftovers()
    if killed:
        log.warning("killed process groups left by a previous worker: %s", killed)
    watch_children_with_pidfds()
    code = asyncio.run(Worker(args.plugin).run())
    # Everything is released by now (children, sockets, files). The interpreter's own teardown (grpc's threads and
    # modules) adds ~70 ms per worker, and supervisord stops workers one after another: skip it.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
