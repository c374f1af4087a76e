"""A HashiCorp go-plugin host on grpcio: spawn the plugin binary, read its handshake, hold its gRPC channel.

The host side of go-plugin's `Client.Start`, written on grpc.aio so that the binary is spawned like every other
child (`Child.spawn`: own process group, PDEATHSIG, pid records for orphan reaping) and its stderr arrives as lines
on the event loop. What it does (docs/protocol.md "go-plugin host"):
- spawn via `Child.spawn` with os.environ + magic cookie (`[handshake] cookie_key` = `cookie_value`, default
  OMNIVIEW = the plugin id), PLUGIN_PROTOCOL_VERSIONS (default "1"), PLUGIN_MIN_PORT/PLUGIN_MAX_PORT (10000/25000);
- read `CORE|APP|NETWORK|ADDR|PROTOCOL[|CERT]` from stdout within `[handshake] timeout` (15 s); failures in words:
  no handshake within N s, exited early with code X (+ stderr tail; go-plugin's "This binary is a plugin" means the
  cookie env was missing or wrong), protocol version mismatch, net/rpc instead of gRPC, AutoMTLS;
- unix and tcp addresses; a `grpc.aio` channel; `grpc.health.v1.Health/Check` with service "plugin";
- plugin stderr lines -> log events (source "plugin"; hclog JSON `@level`, `[LEVEL]` prefixes, plain -> info);
- `stop()`: `/plugin.GRPCController/Shutdown` (raw bytes, empty request), then TERM -> grace -> KILL (Child.stop),
  and remove the unix socket go-plugin leaves behind (1.0.1 leaves /tmp/pluginNNN when killed);
- `on_exit(host, returncode)` callback and the `exited` future: the owner notices a death at once (the child watcher
  wakes on the process's exit, no polling);
- external mode: `connect(network, addr)` / `reattach(addr, network)`, `health()`, `close()` never kill anything;
- debug mode: `adopt(line, pid)` takes a plugin process delve launched (its handshake line, its pid): connect,
  health-check, and report its end (a pidfd) through `on_exit` like an owned process's; `close()` leaves the process
  to delve.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from typing import Any, Callable, NamedTuple

# Children are spawned with fork+exec while grpc threads run; grpc's fork handlers are useless for that and log
# "Other threads are currently calling into gRPC, skipping fork() handlers" at each spawn. Must precede grpc's init.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
import msgspec  # noqa: E402

from omnibroker.process import PidWatch

from .children import Child
from .context import PluginContext, strip_ansi
from .runtime import call_owner

SHUTDOWN_METHOD = "/plugin.GRPCController/Shutdown"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
HEALTH_SERVICE = "plugin"
# grpc.health.v1 on the wire, without protobuf (its runtime and descriptors cost a worker ~1.8 MB): the request is
# HealthCheckRequest{service: "plugin"} (field 1, length-delimited), the answer HealthCheckResponse{status: SERVING}
# (field 1, varint 1) is exactly these two bytes; any other answer is another status.
HEALTH_REQUEST = b"\x0a" + bytes([len(HEALTH_SERVICE)]) + HEALTH_SERVICE.encode()
HEALTH_SERVING = b"\x08\x01"
CORE_PROTOCOL_VERSION = 1
NOT_A_PLUGIN_MARKER = "This binary is a plugin"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.enable_retries", 0),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class PluginError(Exception):
    """The plugin could not be started or reached; `str(e)` says why in words, `stderr` holds its last lines."""

    def __init__(self, message: str, stderr: str = "", returncode: int | None = None):
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


class Handshake(NamedTuple):
    core: int
    app: int
    network: str
    addr: str
    protocol: str
    cert: str


def looks_like_handshake(line: str) -> bool:
    parts = line.strip().split("|")
    return len(parts) in (5, 6) and parts[0].isdigit() and parts[1].isdigit()


def parse_handshake(line: str, accepted_versions: list[int] | None = None) -> Handshake:
    """Parse and check a go-plugin handshake line; PluginError with the reason in words."""
    parts = line.strip().split("|")
    if len(parts) not in (5, 6):
        raise PluginError(f"the plugin printed {line.strip()!r} instead of a go-plugin handshake "
                          f"(CORE|APP|NETWORK|ADDR|PROTOCOL)")
    try:
        core, app = int(parts[0]), int(parts[1])
    except ValueError:
        raise PluginError(f"malformed go-plugin handshake {line.strip()!r}") from None
    hs = Handshake(core, app, parts[2], parts[3], parts[4] or "netrpc", parts[5] if len(parts) == 6 else "")
    if core != CORE_PROTOCOL_VERSION:
        raise PluginError(f"go-plugin core protocol mismatch: the plugin speaks version {core}, "
                          f"this host speaks {CORE_PROTOCOL_VERSION}")
    if accepted_versions and app not in accepted_versions:
        raise PluginError(f"plugin protocol version mismatch: the plugin speaks version {app}, the host offered "
                          f"{','.join(map(str, accepted_versions))} (PLUGIN_PROTOCOL_VERSIONS; set "
                          f"[handshake] protocol_versions)")
    if hs.network not in ("unix", "tcp"):
        raise PluginError(f"the plugin listens on an unsupported network {hs.network!r} (only unix and tcp)")
    if hs.protocol != "grpc":
        raise PluginError(f"the plugin serves {hs.protocol!r}; omni hosts gRPC plugins only "
                          f"(set GRPCServer in the plugin's plugin.ServeConfig)")
    if hs.cert:
        raise PluginError("the plugin requires AutoMTLS (it sent a server certificate); omni connects without TLS")
    return hs


def grpc_target(network: str, addr: str) -> str:
    if network == "unix":
        return "unix:" + addr if addr.startswith("/") else "unix:" + os.path.abspath(addr)
    if network == "tcp":
        return addr
    raise PluginError(f"unsupported network {network!r} (only unix and tcp)")


_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "err": "error",
           "error": "error", "fatal": "error", "panic": "error", "crit": "error"}
_BRACKET = re.compile(r"\[(TRACE|DEBUG|INFO|WARN|WARNING|ERR|ERROR|FATAL)\]\s*", re.IGNORECASE)
_json_decode = msgspec.json.decode


def parse_log_line(line: str) -> tuple[str, str]:
    """(level, message) of one plugin stderr line: hclog JSON, `[LEVEL]` prefix (hclog text, go-plugin), or plain."""
    text = strip_ansi(line).rstrip()
    if text.startswith("{") and text.endswith("}"):
        try:
            doc = _json_decode(text)
        except (msgspec.DecodeError, RecursionError, ValueError):
            doc = None
        if isinstance(doc, dict):
            level = _LEVELS.get(str(doc.get("@level", "info")).lower(), "info")
            msg = str(doc.get("@message", ""))
            extras = [f"{k}={v}" for k, v in doc.items()
                      if isinstance(k, str) and not k.startswith("@")]
            return level, (msg + (" " + " ".join(extras) if extras else "")).strip() or text
    m = _BRACKET.search(text[:64])
    if m:
        level = _LEVELS.get(m.group(1).lower(), "info")
        return level, text[m.end():].strip()
    if text.startswith(("panic:", "fatal error:")):
        return "error", text
    return "info", text


class PluginHost:
    """One plugin process (owned, `start`) or one connection to someone else's (`connect`/`reattach`)."""

    def __init__(self, ctx: PluginContext, *, on_exit: Callable[["PluginHost", int | None], Any] | None = None,
                 name: str = "plugin"):
        self.ctx = ctx
        self.name = name
        self.on_exit = on_exit
        self.child: Child | None = None
        self.channel: grpc.aio.Channel | None = None
        self.handshake: Handshake | None = None
        self.network = ""
        self.addr = ""
        self.binary = ""
        self.owned = False
        self._adopted: PidWatch | None = None      # debug mode: the watch on delve's plugin process
        self._adopted_pid = 0
        # resolves with the exit code when an owned process ends (construct the host on the loop)
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.timings: dict[str, float] = {}
        self._stopping = False
        self._exit_task: asyncio.Task | None = None
        self._hs_future: asyncio.Future[str] | None = None
        self._calls: dict[str, Any] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # --- properties --------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.child.pid if self.child is not None else self._adopted_pid

    @property
    def running(self) -> bool:
        """The owned process is alive (always False for a reattached plugin)."""
        return self.child is not None and self.child.running

    @property
    def connected(self) -> bool:
        return self.channel is not None and not self._stopping and (not self.owned or self.running)

    @property
    def stderr_tail(self) -> str:
        return self.child.tail_text(20) if self.child is not None else ""

    @property
    def returncode(self) -> int | None:
        return self.child.returncode if self.child is not None else None

    # --- start (owned) -----------------------------------------------------------------------------------------
    def plugin_env(self) -> dict[str, str]:
        """The plugin's environment: os.environ, the magic cookie, go-plugin's PLUGIN_* and `[plugin] env`."""
        ctx = self.ctx
        env = dict(os.environ)
        env.pop("PLUGIN_CLIENT_CERT", None)          # we do not speak AutoMTLS
        hs = ctx.settings.handshake
        env[hs.cookie_key] = self._cookie_value
        versions = hs.protocol_versions
        if isinstance(versions, list):
            versions = ",".join(str(v) for v in versions)
        env["PLUGIN_PROTOCOL_VERSIONS"] = str(versions)
        env["PLUGIN_MIN_PORT"] = str(hs.min_port)
        env["PLUGIN_MAX_PORT"] = str(hs.max_port)
        env.update({k: str(v) for k, v in ctx.settings.plugin.env.items()})
        return env

    @property
    def _cookie_value(self) -> str:
        value = self.ctx.settings.handshake.cookie_value
        return self.ctx.id if value is None else value

    def _accepted_versions(self) -> list[int]:
        versions = self.ctx.settings.handshake.protocol_versions
        if not isinstance(versions, list):
            versions = str(versions).split(",")
        out = []
        for v in versions:
            try:
                out.append(int(str(v).strip()))
            except ValueError:
                pass
        return out

    def _on_line(self, stream: str, line: str) -> None:
        if stream == "stdout":
            fut = self._hs_future
            if fut is not None and not fut.done() and looks_like_handshake(line):
                fut.set_result(line)
                return
            self.ctx.log("plugin", "info", line)
            return
        level, msg = parse_log_line(line)
        if msg:
            self.ctx.log("plugin", level, msg)

    async def start(self, binary_path: str, *, timeout: float | None = None, args: list[str] | None = None,
                    cwd: str | None = None) -> None:
        """Spawn, handshake, connect, health-check. On any failure nothing is left running and PluginError says why."""
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = self.ctx.settings.handshake.timeout
        t0 = loop.time()
        deadline = t0 + timeout
        self.binary = binary_path
        self.owned = True
        self._hs_future = loop.create_future()
        try:
            self.child = await Child.spawn(self.name, [binary_path, *(args or [])], cwd=cwd or self.ctx.dir,
                                           env=self.plugin_env(), on_line=self._on_line, registry=self.ctx.children,
                                           tail=100)
        except OSError as e:
            raise PluginError(f"cannot run the plugin binary {binary_path}: {e.strerror or e}") from e
        self.timings["spawned"] = loop.time()
        self._exit_task = asyncio.ensure_future(self._watch_exit())
        try:
            line = await self._await_handshake(timeout, deadline)
            self.timings["handshake"] = loop.time()
            parts = line.strip().split("|")
            self.network, self.addr = parts[2], parts[3]     # known even if rejected: for the socket cleanup
            hs = parse_handshake(line, self._accepted_versions())
            self.handshake = hs
            self.network, self.addr = hs.network, hs.addr
            await self._open_channel(hs.network, hs.addr, max(0.5, deadline - loop.time()))
            self.timings["connected"] = loop.time()
            if not await self.health(timeout=max(0.5, deadline - loop.time())):
                # a plugin that exited fails its health check at once: say that rather than "not SERVING"
                exited, _ = await asyncio.wait({self._exit_task}, timeout=1.0)
                if exited:
                    raise self._exited_after_handshake()
                raise PluginError(f"the plugin answered its handshake but its health check (service "
                                  f"{HEALTH_SERVICE!r}) did not report SERVING{self._exit_words()}")
            self.timings["healthy"] = loop.time()
        except BaseException as e:
            # never leave a half-started plugin behind
            await asyncio.shield(self._abort())
            if isinstance(e, PluginError) and not e.stderr:
                e.stderr = self.stderr_tail
            raise
        self.ctx.log("manager", "info", f"plugin {os.path.basename(binary_path)} ready (pid {self.pid}, "
                                        f"{self.network} {self.addr}, "
                                        f"{(self.timings['healthy'] - t0) * 1000:.0f} ms)")

    def _exited_after_handshake(self) -> PluginError:
        return PluginError(f"the plugin process exited with code {self.returncode} right after its handshake"
                           + (self._exit_words() or " and printed nothing else"), self.stderr_tail, self.returncode)

    def _exit_words(self) -> str:
        tail = self.stderr_tail
        return f"; its output:\n{tail}" if tail else ""

    async def _await_handshake(self, timeout: float, deadline: float) -> str:
        loop = asyncio.get_running_loop()
        assert self._hs_future is not None and self._exit_task is not None
        done, _ = await asyncio.wait({self._hs_future, self._exit_task}, timeout=max(0.0, deadline - loop.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._hs_future in done:
            return self._hs_future.result()
        tail = self.stderr_tail
        if self._exit_task in done or not self.running:
            rc = self.returncode
            if NOT_A_PLUGIN_MARKER in tail:
                key, val = self.ctx.settings.handshake.cookie_key, self._cookie_value
                raise PluginError(
                    f"the plugin refused to start: its magic cookie env was missing or wrong (go-plugin says 'This "
                    f"binary is a plugin. These are not meant to be executed directly'); omni sets {key}={val} — "
                    f"set [handshake] cookie_key / cookie_value to the plugin's HandshakeConfig", tail, rc)
            raise PluginError(f"the plugin exited during startup with code {rc} before its go-plugin handshake"
                              + (f"; its output:\n{tail}" if tail else " and printed nothing"), tail, rc)
        raise PluginError(f"no go-plugin handshake within {timeout:g} s (the plugin is running but printed no "
                          f"CORE|APP|NETWORK|ADDR|PROTOCOL line on stdout; does it call plugin.Serve?)"
                          + (f"; its output:\n{tail}" if tail else ""), tail, None)

    async def _watch_exit(self) -> None:
        assert self.child is not None
        rc = await self.child.wait()
        self._remove_socket()
        if not self.exited.done():
            self.exited.set_result(rc)
        if not self._stopping:
            await call_owner(self.ctx, "plugin exit", self.on_exit, self, rc)

    def _remove_socket(self) -> None:
        if self.network != "unix" or not self.addr or not self.owned:
            return
        try:
            st = os.lstat(self.addr)
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
                os.unlink(self.addr)
        except OSError:
            pass

    async def _abort(self) -> None:
        self._stopping = True
        await self._close_channel()
        if self.child is not None:
            await self.child.stop(grace=0.5)
        if self._exit_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._exit_task), 2)
        self._remove_socket()

    # --- connect (owned or external) ---------------------------------------------------------------------------
    async def _open_channel(self, network: str, addr: str, timeout: float) -> None:
        target = grpc_target(network, addr)
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        ready = asyncio.ensure_future(channel.channel_ready())
        # an owned plugin that exits meanwhile is reported at once, not after the timeout
        exited = {self._exit_task} if self.owned and self._exit_task is not None else set()
        try:
            done, _ = await asyncio.wait({ready, *exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            ready.cancel()
            await channel.close()
            raise
        if ready not in done:
            ready.cancel()
            await channel.close()
            if exited & done:
                raise self._exited_after_handshake()
            raise PluginError(f"cannot connect to the plugin's gRPC server at {network}:{addr} within "
                              f"{timeout:.1f} s{self._exit_words()}")
        try:
            ready.result()
        except BaseException:
            await channel.close()
            raise
        self.channel = channel
        self._calls.clear()

    async def adopt(self, line: str, pid: int, *, timeout: float | None = None) -> None:
        """Debug mode: the plugin process `pid` was launched by delve and printed handshake `line`; connect and
        health-check it (PluginError says why not). Its end calls `on_exit(host, None)` unless the host was closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.ctx.settings.handshake.timeout if timeout is None else timeout)
        hs = parse_handshake(line, self._accepted_versions())
        self.handshake, self.network, self.addr = hs, hs.network, hs.addr
        self._adopted_pid = pid
        self.timings["handshake"] = loop.time()
        await self.connect(hs.network, hs.addr, timeout=max(0.5, deadline - loop.time()))
        if not await self.health(timeout=max(0.5, deadline - loop.time())):
            await self.close()
            raise PluginError(f"the plugin under delve (pid {pid}) answered its handshake but its health check "
                              f"(service {HEALTH_SERVICE!r}) did not report SERVING")
        self.timings["healthy"] = loop.time()
        self._adopted = PidWatch(pid, None, self._adopted_exit, thread_fallback=False)
        self._adopted.start()

    def _adopted_exit(self) -> None:
        if self._adopted is not None:
            self._adopted.stop()
        if not self.exited.done():
            self.exited.set_result(None)
        if not self._stopping:
            asyncio.ensure_future(call_owner(self.ctx, "plugin exit", self.on_exit, self, None))

    async def connect(self, network: str, addr: str, *, timeout: float = 5.0) -> None:
        """External mode: open a channel to a plugin someone else started (never killed by us)."""
        self.owned = False
        self.network, self.addr = network, addr
        self._stopping = False
        await self._open_channel(network, addr, timeout)

    async def reattach(self, addr: str, network: str, *, timeout: float = 5.0) -> bool:
        """External mode: connect and health-check; True when the plugin is SERVING. Never starts or kills."""
        await self.connect(network, addr, timeout=timeout)
        return await self.health(timeout=timeout)

    async def health(self, timeout: float = 2.0) -> bool:
        """grpc.health.v1.Health/Check(service="plugin") == SERVING."""
        channel = self.channel
        if channel is None:
            return False
        try:
            return await channel.unary_unary(HEALTH_METHOD)(HEALTH_REQUEST, timeout=timeout) == HEALTH_SERVING
        except grpc.aio.AioRpcError:
            return False
        except asyncio.CancelledError:
            raise
        except Exception:
            return False

    # --- calls ---------------------------------------------------------------------------------------------------
    async def invoke(self, method: str, request: bytes, timeout: float) -> bytes:
        """A raw unary call (bytes in, bytes out). Raises grpc.aio.AioRpcError, or PluginError when not connected."""
        channel = self.channel
        if channel is None or self._stopping:
            raise PluginError("the plugin is not connected")
        call = self._calls.get(method)
        if call is None:
            call = channel.unary_unary(method)          # no serializers: bytes pass through
            self._calls[method] = call
        self._inflight += 1
        self._idle.clear()
        try:
            return await call(bytes(request), timeout=timeout)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def drain(self, timeout: float) -> bool:
        """Wait until no call is in flight (bounded). True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # --- stop ----------------------------------------------------------------------------------------------------
    async def _close_channel(self) -> None:
        channel, self.channel = self.channel, None
        self._calls.clear()
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        """Close the gRPC channel only (external and debug mode); the process is left alone."""
        self._stopping = True
        if self._adopted is not None:
            self._adopted.stop()
        await self._close_channel()

    async def stop(self, grace: float = 2.0) -> int | None:
        """Shutdown RPC, then TERM -> grace -> KILL to the process group; remove the unix socket. Returns the code."""
        if not self.owned or self.child is None:
            await self.close()
            return None
        self._stopping = True
        channel = self.channel
        if channel is not None and self.child.running:
            with contextlib.suppress(Exception):
                await channel.unary_unary(SHUTDOWN_METHOD)(b"", timeout=min(1.0, grace))
        await self._close_channel()
        if self.child.running:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.child.wait()), min(1.0, grace))
        rc = await self.child.stop(grace)       # TERM -> grace -> KILL (and KILL to leftovers of the group)
        if self._exit_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._exit_task), 2)
        self._remove_socket()
        if not self.exited.done():
            self.exited.set_result(rc)
        return rc
