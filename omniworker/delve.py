"""A go-plugin binary run under delve, and delve's JSON-RPC API: what a worker needs to debug a plugin across reloads.

- `find_dlv()` is the `dlv` on PATH (Debian's package `delve`); missing, `DelveError` names the package.
- `DelveTarget(ctx, port)` runs `dlv exec --headless --accept-multiclient --api-version=2 --only-same-user
  --listen=127.0.0.1:PORT BINARY -- ARGS` as a `Child` (own process group, death signal, OMNI_CHILD mark) with the
  go-plugin environment the caller passes. delve serves its JSON-RPC API and DAP on that one port (an IDE attaches
  with either); `--only-same-user` makes it refuse connections from other local users. delve's stdout is the
  target's stdout: delve's own lines ("API server listening at: …") are logged as manager lines, go-plugin
  handshake lines are handed to the caller (`start`/`restart` return them), anything else is plugin output. delve's
  stderr carries the target's stderr (hclog) too: it is logged as plugin lines, parsed like a plain plugin's.
- `start` connects a `DelveClient`, lets the target run (`continue`) and returns its handshake line.
- `restart` keeps the debugging session across a reload: once a new binary is installed at the same path (atomic
  rename), the running target is ended (SIGTERM, else a halt), re-executed from that path by the same delve on the
  same port (`RPCServer.Restart`, `Rerecord: false, Rebuild: false`), continued, and the new handshake line is
  returned with the breakpoints kept and those delve could not carry over (`DiscardedBreakpoints`). A target that
  ended on its own (delve stays: `next_stop` says `exited`) is run again the same way.
- "Paused is not dead": `paused()` asks delve whether the target is halted and where (`Stop`), without blocking;
  a halted target answers no gRPC call (health checks included) until someone continues it.
- delve's exit is noticed at once (`exited`; `on_exit(target, returncode)` after a successful start, unless
  `stop` was called): the child's end kills every process carrying its mark, so a SIGKILLed delve leaves no target
  behind (the target is delve's child, in its own process group, and keeps running when its tracer dies), and the
  target's unix socket is removed.
- `stop()` detaches with `Kill: true` (delve kills the target and exits), then TERM → grace → KILL as any child.

Debug builds: `debug_build(command, env)` adds `-gcflags=all=-N -l` (no optimisation, no inlining) to a `go build`
command and sets OMNI_DEBUG=1 and OMNI_DEBUG_GCFLAGS=`all=-N -l` in the build's environment, so a custom `[build]
command` (a script, make) passes `-gcflags="$OMNI_DEBUG_GCFLAGS"` to its own `go build` (docs/debugging.md).

Debug ports: one per plugin from `[service] debug_ports` (DEBUG_PORTS = [2345, 2445) by default, delve's customary
2345 first), handed out by the broker's second omnibroker.ports.PortAllocator and persisted like Vite's ports, so an
IDE's attach configuration keeps working day after day. debugsession.py runs a managed plugin's session.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import stat
from typing import Any, Callable, NamedTuple

import psutil

from omnibroker.ports import DEBUG_RANGE_END, DEBUG_RANGE_START

from .children import Child
from .context import PluginContext
from .gobuild import STRIP_LDFLAGS
from .goplugin import looks_like_handshake, parse_log_line
from .runtime import call_owner

DLV = "dlv"
DEBIAN_PACKAGE = "delve"
HOST = "127.0.0.1"
DEBUG_PORTS = (DEBUG_RANGE_START, DEBUG_RANGE_END)  # [first, last): [service] debug_ports' default
DEBUG_GCFLAGS = "all=-N -l"
LISTENING_PREFIX = "API server listening at:"
DEFAULT_TIMEOUT = 30.0                      # s for delve to listen and the target to print its handshake
CALL_TIMEOUT = 10.0                         # s for a JSON-RPC answer (continue excepted: it answers on a stop)
_PORT_TAKEN = "address already in use"
_EXITED = "has exited with status"


class DelveError(Exception):
    """delve could not be run or reached; `str(e)` says why. `port_taken`: the debug port is held by someone else."""

    def __init__(self, message: str, *, port_taken: bool = False, output: str = ""):
        super().__init__(message)
        self.port_taken = port_taken
        self.output = output


class Stop(NamedTuple):
    """Where a halted target stands: the current thread's position, and the breakpoint it hit (id 0: none, e.g. a
    halt; ids below 0 are delve's own, such as -1 for an unrecovered panic)."""
    file: str
    line: int
    function: str
    breakpoint: int


class Restarted(NamedTuple):
    handshake: str                           # the new target's go-plugin handshake line
    breakpoints: list[dict]                  # the user's breakpoints set in the new target
    discarded: list[dict]                    # DiscardedBreakpoints: [{"breakpoint": {...}, "reason": "..."}]


def find_dlv(env: dict[str, str] | None = None) -> str:
    """Absolute path of `dlv` on PATH; DelveError naming the Debian package when it is not installed."""
    path = shutil.which(DLV, path=(env if env is not None else os.environ).get("PATH"))
    if path is None:
        raise DelveError(f"cannot debug: delve ({DLV!r}) is not on PATH; install Debian's {DEBIAN_PACKAGE!r} "
                         f"package (apt-get install {DEBIAN_PACKAGE}, or `make setup`)")
    return path


def delve_argv(dlv: str, binary: str, port: int, args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command line running `binary args` under a headless delve listening on 127.0.0.1:port."""
    argv = [dlv, "exec", "--headless", "--accept-multiclient", "--api-version=2", "--only-same-user",
            f"--listen={HOST}:{port}", binary]
    return argv + ["--", *args] if args else argv


def debug_build(command: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The debug variant of a build: `-gcflags=all=-N -l` right after `go build` (a -gcflags of the command itself,
    later on the line, wins), without the default command's `-ldflags=-s -w` (delve needs the DWARF it strips), and
    OMNI_DEBUG=1, OMNI_DEBUG_GCFLAGS in the environment for custom build commands."""
    cmd = [a for a in command if a != STRIP_LDFLAGS]
    for i in range(len(cmd) - 1):
        if os.path.basename(cmd[i]) == "go" and cmd[i + 1] == "build":
            cmd.insert(i + 2, f"-gcflags={DEBUG_GCFLAGS}")
            break
    return cmd, {**env, "OMNI_DEBUG": "1", "OMNI_DEBUG_GCFLAGS": DEBUG_GCFLAGS}


def is_delve_line(line: str) -> bool:
    """A line delve prints on the target's stdout (not the target's own output)."""
    return line.startswith(LISTENING_PREFIX)


def user_breakpoints(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """The breakpoints in a ListBreakpoints answer that users set (delve's own ones have ids <= 0)."""
    return [bp for bp in listing.get("Breakpoints") or [] if int(bp.get("id", 0)) > 0]


def stop_of(state: dict[str, Any]) -> Stop | None:
    """The Stop described by a delve `State`, or None when the target runs or has exited."""
    if state.get("Running") or state.get("exited"):
        return None
    thread = state.get("currentThread") or {}
    bp = thread.get("breakPoint") or {}
    fn = thread.get("function") or {}
    return Stop(str(bp.get("file") or thread.get("file") or ""), int(bp.get("line") or thread.get("line") or 0),
                str(bp.get("functionName") or fn.get("name") or ""), int(bp.get("id") or 0))


class DelveClient:
    """delve's JSON-RPC 2 API over TCP (one JSON object per line, answers matched by id, several calls in flight)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._closed: DelveError | None = None
        self._read_task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int, *, host: str = HOST, timeout: float = 5.0) -> "DelveClient":
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=16 << 20), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise DelveError(f"cannot connect to delve at {host}:{port}: {e or 'timed out'}") from e
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def _read(self) -> None:
        reason = "delve closed the connection"
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is None or fut.done():
                    continue
                if msg.get("error"):
                    fut.set_exception(DelveError(f"delve: {msg['error']}"))
                else:
                    fut.set_result(msg.get("result") or {})
        except (OSError, ValueError) as e:
            reason = f"the connection to delve failed: {e}"
        finally:
            self._fail_all(DelveError(reason))

    def _fail_all(self, error: DelveError) -> None:
        self._closed = self._closed or error
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()             # retrieved: a continue nobody awaits must not log "never retrieved"

    def send(self, method: str, params: dict[str, Any]) -> asyncio.Future:
        """Send `RPCServer.<method>(params)`; the future resolves with its result (DelveError on error or close)."""
        fut = asyncio.get_running_loop().create_future()
        if self._closed is not None:
            fut.set_exception(self._closed)
            return fut
        call_id = next(self._ids)
        self._pending[call_id] = fut
        self._writer.write(json.dumps({"method": f"RPCServer.{method}", "params": [params], "id": call_id})
                           .encode() + b"\n")
        return fut

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.send(method, params or {}), timeout)
        except asyncio.TimeoutError:
            raise DelveError(f"delve did not answer {method} within {timeout:g} s") from None

    # --- the calls a worker needs ------------------------------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        """The target's state without waiting for it to stop (`Running`, `exited`, `currentThread`, `Pid`)."""
        try:
            return (await self.call("State", {"NonBlocking": True}))["State"]
        except DelveError as e:
            if _EXITED in str(e):            # delve answers an error, not a state, once the target has exited
                return {"Running": False, "exited": True}
            raise

    async def stopped_at(self) -> Stop | None:
        """Where the target is halted, or None when it runs (or has exited)."""
        return stop_of(await self.state())

    async def halt(self) -> dict[str, Any]:
        """Stop the target; returns its state (a `continue` in flight answers too)."""
        return (await self.call("Command", {"name": "halt"}))["State"]

    def resume(self) -> asyncio.Future[dict[str, Any]]:
        """`continue`: the target runs; the future resolves with its state when it stops next (a breakpoint, a
        halt, its exit: `exited`, `exitStatus`), which may be never: nobody has to await it."""
        sent = self.send("Command", {"name": "continue"})
        stopped: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def relay(f: asyncio.Future) -> None:
            if stopped.done():
                return
            if f.cancelled():
                stopped.cancel()
            elif f.exception() is not None:
                stopped.set_exception(f.exception())
            else:
                stopped.set_result(f.result().get("State") or {})
        sent.add_done_callback(relay)
        stopped.add_done_callback(lambda f: f.cancelled() or f.exception())
        return stopped

    async def create_breakpoint(self, file: str, line: int, **fields: Any) -> dict[str, Any]:
        """A breakpoint at file:line (absolute path); the target must be halted."""
        bp = {"file": file, "line": line, **fields}
        return (await self.call("CreateBreakpoint", {"Breakpoint": bp}))["Breakpoint"]

    async def breakpoints(self) -> list[dict[str, Any]]:
        """The breakpoints set by users (delve's own ones, id <= 0, left out); delve 1.20 answers only once the
        target is halted."""
        return user_breakpoints(await self.call("ListBreakpoints", {"All": False}))

    async def clear_breakpoint(self, bp_id: int) -> dict[str, Any]:
        return (await self.call("ClearBreakpoint", {"Id": bp_id}))["Breakpoint"]

    async def restart(self) -> list[dict[str, Any]]:
        """Re-execute the target from its path (the target must be halted); returns DiscardedBreakpoints."""
        res = await self.call("Restart", {"Rerecord": False, "Rebuild": False, "Position": "", "ResetArgs": False})
        return list(res.get("DiscardedBreakpoints") or [])

    async def detach(self, kill: bool = True, timeout: float = 2.0) -> bool:
        """End the session: with `kill`, delve kills the target; a headless delve then exits. False when delve did
        not answer (it answers only once the target is halted)."""
        try:
            await self.call("Detach", {"Kill": kill}, timeout=timeout)
            return True
        except DelveError:
            return False

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._read_task, 1.0)


class DelveTarget:
    """A plugin binary running under its own headless delve on a fixed port, and omni's connection to that delve."""

    def __init__(self, ctx: PluginContext, port: int, *,
                 on_exit: Callable[["DelveTarget", int | None], Any] | None = None, name: str = "delve"):
        self.ctx = ctx
        self.port = port
        self.name = name
        self.on_exit = on_exit
        self.child: Child | None = None
        self.client: DelveClient | None = None
        self.binary = ""
        self.socket = ""                    # the current target's unix socket (from its handshake), removed on exit
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.timings: dict[str, float] = {}
        self._listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshakes: asyncio.Queue[str] = asyncio.Queue()
        self._exit_task: asyncio.Task | None = None
        self.next_stop: asyncio.Future[dict] | None = None
        self._started = False               # on_exit is for a delve that ended after a successful start
        self._stopping = False

    @property
    def pid(self) -> int:
        """delve's pid."""
        return self.child.pid if self.child is not None else 0

    @property
    def plugin_pid(self) -> int:
        """The target's pid (delve's one child), 0 when there is none."""
        if not self.running:
            return 0
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(self.pid).children():
                return proc.pid
        return 0

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    # --- output --------------------------------------------------------------------------------------------------
    def _on_line(self, stream: str, line: str) -> None:
        if stream == "stdout":
            if looks_like_handshake(line):
                self._handshakes.put_nowait(line.strip())
            elif is_delve_line(line):
                if not self._listening.done():
                    self._listening.set_result(None)
                self.ctx.log("manager", "info", f"delve: {line.strip()}")
            else:
                self.ctx.log("plugin", "info", line)
            return
        level, msg = parse_log_line(line)
        if msg:
            self.ctx.log("plugin", level, msg)

    # --- start ---------------------------------------------------------------------------------------------------
    async def start(self, binary: str, env: dict[str, str], *, args: list[str] | tuple[str, ...] = (),
                    cwd: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                    breakpoints: list[dict] | tuple[dict, ...] = ()) -> str:
        """Run `binary` under delve with `env` (the go-plugin host's environment), set `breakpoints` (delve's
        breakpoint dicts: `file`, `line`) before the target runs, let it run, return its handshake line. On failure
        nothing is left running and DelveError (or its port_taken) says why."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.binary = binary
        argv = delve_argv(find_dlv(env), binary, self.port, args)
        if not os.access(binary, os.X_OK) or not os.path.isfile(binary):
            raise DelveError(f"cannot run the plugin binary {binary}: not found or not executable")
        self.timings["spawn"] = loop.time()
        try:
            self.child = await Child.spawn(self.name, argv, cwd=cwd or self.ctx.dir, env=env,
                                           on_line=self._on_line, registry=self.ctx.children, tail=100)
        except OSError as e:
            raise DelveError(f"cannot run delve: {e.strerror or e}") from e
        self._exit_task = asyncio.ensure_future(self._watch_exit())
        try:
            await self._until(self._listening, deadline, "delve did not listen on "
                              f"{self.address} within {timeout:g} s")
            self.timings["listening"] = loop.time()
            try:
                self.client = await DelveClient.connect(self.port, timeout=max(0.5, deadline - loop.time()))
            except DelveError:
                # delve listens before it launches the target: a launch failure closes the port as delve exits
                await asyncio.wait({self._exit_task}, timeout=1.0)
                if not self.running:
                    raise self._exit_error() from None
                raise
            for bp in breakpoints:
                try:
                    await self.client.create_breakpoint(str(bp["file"]), int(bp["line"]))
                except DelveError as e:
                    self.ctx.log("manager", "warn", f"breakpoint {bp['file']}:{bp['line']} not set again: {e}")
            self.resume()
            line = await self._next_handshake(deadline, timeout)
        except BaseException:
            await asyncio.shield(self._abort())
            raise
        self.timings["handshake"] = loop.time()
        self._started = True
        self.ctx.log("manager", "info", f"plugin {os.path.basename(binary)} runs under delve (pid {self.pid}), "
                                        f"debugger on {self.address}")
        return line

    async def _until(self, fut: asyncio.Future, deadline: float, late: str) -> Any:
        """`fut`'s result, or DelveError when delve exits first (saying why) or the deadline passes."""
        assert self._exit_task is not None
        waiter = asyncio.ensure_future(asyncio.shield(fut))
        try:
            done, _ = await asyncio.wait({waiter, self._exit_task}, return_when=asyncio.FIRST_COMPLETED,
                                         timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        finally:
            if not waiter.done():
                waiter.cancel()
        if waiter in done:
            return waiter.result()
        if self._exit_task in done or not self.running:
            raise self._exit_error()
        raise DelveError(late, output=self.output)

    def _exit_error(self) -> DelveError:
        out = self.output
        rc = self.child.returncode if self.child is not None else None
        if _PORT_TAKEN in out:
            return DelveError(f"delve cannot listen on {self.address}: the port is in use by another program",
                              port_taken=True, output=out)
        return DelveError(f"delve exited with code {rc}" + (f"; its output:\n{out}" if out else ""), output=out)

    async def _next_handshake(self, deadline: float, timeout: float) -> str:
        """The target's next handshake line; DelveError when delve exits, the target exits first (delve's answer
        to the pending continue says so) or the deadline passes. A target stopped at a breakpoint before its
        handshake is waited for (someone debugging it continues it)."""
        getter = asyncio.ensure_future(self._handshakes.get())
        stopped = self.next_stop
        late = f"the plugin printed no go-plugin handshake under delve within {timeout:g} s"
        try:
            first = asyncio.ensure_future(asyncio.wait({getter, stopped} if stopped else {getter},
                                                       return_when=asyncio.FIRST_COMPLETED))
            try:
                await self._until(first, deadline, late)
            finally:
                first.cancel()
            if not getter.done() and stopped is not None and stopped.exception() is None:
                state = stopped.result()
                if state.get("exited"):
                    out = self.output
                    raise DelveError(f"the plugin exited with status {state.get('exitStatus')} under delve before "
                                     f"its go-plugin handshake" + (f"; its output:\n{out}" if out else ""), output=out)
            line = await self._until(getter, deadline, late)
        finally:
            getter.cancel()
        parts = line.split("|")
        self.socket = parts[3] if parts[2] == "unix" else ""
        return line

    @property
    def output(self) -> str:
        """delve's last lines (its errors, the target's last words)."""
        return self.child.tail_text(20) if self.child is not None else ""

    # --- the session ---------------------------------------------------------------------------------------------
    def _client(self) -> DelveClient:
        if self.client is None or self.client.closed or not self.running:
            raise DelveError(f"delve on {self.address} is not running")
        return self.client

    def resume(self) -> asyncio.Future[dict]:
        """Let the halted target run; `next_stop` (the future returned) resolves with delve's state when it stops
        next: a breakpoint, a halt (from omni or an IDE), or its exit (`exited: true`, `exitStatus`; delve stays, and
        `restart` runs the binary again). DelveError if delve goes away first."""
        self.next_stop = self._client().resume()
        return self.next_stop

    async def paused(self) -> Stop | None:
        """Where the target is halted (a breakpoint, a halt from an IDE), or None when it runs."""
        return await self._client().stopped_at()

    async def restart(self, *, timeout: float = DEFAULT_TIMEOUT, grace: float = 2.0) -> Restarted:
        """Re-execute the binary now installed at the same path under the same delve (same port, breakpoints kept),
        let it run, and return its new handshake line, the breakpoints kept and those delve discarded.

        A running target is sent SIGTERM first (go-plugin's graceful exit; within `grace` s, else it is halted):
        delve restarts an exited target at once, while halting a running one takes it about half a second. A
        halted target (a breakpoint) is restarted as it stands."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client = self._client()
        self.timings["restart"] = loop.time()
        if (await client.state()).get("Running") and not await _terminate(self.plugin_pid, grace):
            await client.halt()
        while not self._handshakes.empty():
            self._handshakes.get_nowait()
        old_socket = self.socket
        discarded = await client.restart()
        _remove_socket(old_socket)          # the old target is gone: a killed go-plugin leaves its socket behind
        kept = await client.breakpoints()   # the new target is halted at its entry until continued
        self.resume()
        line = await self._next_handshake(deadline, timeout)
        self.timings["restarted"] = loop.time()
        for d in discarded:
            bp = d.get("breakpoint") or {}
            self.ctx.log("manager", "warn", f"delve discarded the breakpoint at {bp.get('file')}:{bp.get('line')} "
                                            f"on restart: {d.get('reason')}")
        return Restarted(line, kept, discarded)

    # --- exit and stop -------------------------------------------------------------------------------------------
    async def _watch_exit(self) -> None:
        assert self.child is not None
        rc = await self.child.wait()        # the child's end also kills the target (it carries the child's mark)
        _remove_socket(self.socket)
        if self.client is not None:
            await self.client.close()
        if not self.exited.done():
            self.exited.set_result(rc)
        if self._started and not self._stopping:
            self.ctx.log("manager", "error", f"delve on {self.address} exited with code {rc}")
            await call_owner(self.ctx, "delve exit", self.on_exit, self, rc)

    async def _abort(self) -> None:
        self._stopping = True
        if self.client is not None:
            await self.client.close()
        if self.child is not None:
            await self.child.stop(grace=0.5)
        if self._exit_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._exit_task), 3)

    async def stop(self, grace: float = 2.0) -> int | None:
        """Kill the target through delve, then end delve (TERM → grace → KILL); nothing is left behind."""
        self._stopping = True
        if self.child is None:
            return None
        if self.client is not None and not self.client.closed and self.child.running:
            # delve serves Detach only while the target is halted (a running target's `continue` holds it): halt first
            with contextlib.suppress(DelveError, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(self.client.halt(), min(1.0, grace))
            if not await self.client.detach(kill=True, timeout=min(2.0, grace)):
                self.ctx.log("manager", "warn", f"delve on 127.0.0.1:{self.port} did not answer Detach: terminating it")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.child.wait()), min(1.0, grace))
        await self._abort()
        return self.child.returncode


async def _terminate(pid: int, grace: float) -> bool:
    """SIGTERM to `pid` (not our child: delve's); True once it has ended, within `grace` s."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
    try:
        os.kill(pid, signal.SIGTERM)
        await asyncio.wait_for(ended, grace)
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _remove_socket(path: str) -> None:
    """Remove a go-plugin unix socket of ours (a killed plugin leaves it in /tmp)."""
    if not path:
        return
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
            os.unlink(path)
    except OSError:
        pass
