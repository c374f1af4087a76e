"""The broker's control socket (ROUTER, clients' REQ or DEALER): requests in, replies out.

A request is decoded, its command looked up in the table and its properties validated; reads of the broker's state
(`immediate` commands) are answered on the spot, the rest run in their own task, at most MAX_IN_FLIGHT at once per
client. `exclusive` commands of one plugin run one at a time (never globally), the wait for their turn counted in
their timeout. Replies over MAX_REPLY_BYTES become `too_large` errors.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import zmq

from . import protocol
from .commands import COMMANDS, Command
from .protocol import CommandError, ErrorCode
from .zstream import Stream

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("omnibroker")


class Control:
    """The control socket of `broker`: its Stream, the requests each client has in flight, each plugin's turn."""

    def __init__(self, broker: "Broker", socket: zmq.Socket):
        self.broker = broker
        self.in_flight: dict[bytes, int] = {}          # control client identity -> requests being executed
        self.locks: dict[str, asyncio.Lock] = {}       # plugin -> its exclusive commands' turn
        self.stream = Stream(socket, self.on_request)

    def close(self) -> None:
        self.stream.close()

    def on_request(self, frames: list[bytes]) -> None:
        """One request: reads of the broker's state are answered on the spot; the rest run in their own task, at
        most MAX_IN_FLIGHT at once per client (more are answered `busy`)."""
        if len(frames) >= 2 and frames[1] == b"":
            envelope, body = frames[:2], frames[2:]     # REQ client
        else:
            envelope, body = frames[:1], frames[1:]     # DEALER client without delimiter
        rid: Any = None
        try:
            request = protocol.decode_request(body)
            rid = request.id
            cmd = COMMANDS.get(request.command)
            if cmd is None:
                raise CommandError(ErrorCode.UNKNOWN_COMMAND,
                                   f"unknown command {request.command!r}; known: {', '.join(COMMANDS)}")
            props = cmd.validate(request.properties)
            if not cmd.immediate:
                client = envelope[0]
                held = self.in_flight.get(client, 0)
                if held >= protocol.MAX_IN_FLIGHT:
                    raise CommandError(ErrorCode.BUSY,
                                       f"this client already has {held} requests in flight, the limit "
                                       f"(MAX_IN_FLIGHT); read their replies before sending more")
                self.in_flight[client] = held + 1
                self.broker._spawn(self._execute(envelope, rid, cmd, props))
                return
            reply = protocol.ok_reply(rid, cmd.run(self.broker, props))
        except CommandError as e:
            reply = protocol.error_reply(rid if rid is not None else protocol.request_id_of(body), e.code, e.reason)
        except Exception as e:      # noqa: BLE001 - the broker never dies from a request
            log.exception("command failed")
            reply = protocol.error_reply(rid, ErrorCode.INTERNAL, f"internal error: {e!r}")
        self._reply(envelope, reply)

    async def _execute(self, envelope: list[bytes], rid: Any, cmd: Command, props: dict[str, Any]) -> None:
        try:
            plugin = props.get("plugin")
            if cmd.exclusive and isinstance(plugin, str) and cmd.forward:
                result = await self._exclusive_forward(cmd, plugin, props)
            elif cmd.exclusive and isinstance(plugin, str):
                async with self.locks.setdefault(plugin, asyncio.Lock()):
                    result = await cmd.execute(self.broker, props)
            else:
                result = await cmd.execute(self.broker, props)
            reply = protocol.ok_reply(rid, result)
        except CommandError as e:
            reply = protocol.error_reply(rid, e.code, e.reason)
        except Exception as e:      # noqa: BLE001 - the broker never dies from a request
            log.exception("command %s failed", cmd.name)
            reply = protocol.error_reply(rid, ErrorCode.INTERNAL, f"internal error: {e!r}")
        finally:
            client = envelope[0]
            held = self.in_flight.pop(client, 1) - 1
            if held:
                self.in_flight[client] = held
        self._reply(envelope, reply)

    async def _exclusive_forward(self, cmd: Command, plugin: str, props: dict[str, Any]) -> Any:
        """A plugin's mode commands run one at a time; the wait for a command's turn counts toward its timeout, so a
        storm of them is answered within each one's timeout (a command whose turn did not come is not run)."""
        loop = asyncio.get_running_loop()
        lock = self.locks.setdefault(plugin, asyncio.Lock())
        t0 = loop.time()
        try:
            await asyncio.wait_for(lock.acquire(), cmd.timeout)
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.TIMEOUT,
                               f"{cmd.name} {plugin}: not run: the commands sent before it for {plugin!r} were still "
                               f"running after {cmd.timeout:.0f}s") from None
        try:
            return await asyncio.wait_for(cmd.execute(self.broker, props), max(0.0, cmd.timeout - (loop.time() - t0)))
        except asyncio.TimeoutError:
            raise CommandError(ErrorCode.TIMEOUT,
                               f"the worker for {plugin!r} did not answer {cmd.name!r} within {cmd.timeout:.0f}s "
                               f"(waiting for its turn included); see "
                               f"{self.broker.supervisor.log_dir}/omniworker-{plugin}.log") from None
        finally:
            lock.release()

    def _reply(self, envelope: list[bytes], reply: protocol.Reply) -> None:
        """Send a reply; one over MAX_REPLY_BYTES is replaced by a `too_large` error (that is what bounds what a
        client that does not read its replies costs: CONTROL_SNDHWM of them at most)."""
        body = protocol.encode(reply)
        if len(body) > protocol.MAX_REPLY_BYTES:
            body = protocol.encode(protocol.error_reply(
                reply.id, ErrorCode.TOO_LARGE, f"the reply is {len(body)} bytes, over the limit of "
                f"{protocol.MAX_REPLY_BYTES} bytes (MAX_REPLY_BYTES); ask for less (e.g. a smaller `logs` count)"))
        if not self.stream.send(envelope + [body]):
            log.warning("could not send reply %r: the client is gone", reply.id)
