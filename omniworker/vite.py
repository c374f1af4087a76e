"""The worker's Vite part (Mode A, UI half): runs the plugin UI's own Vite on the port the broker gave it.

Lifecycle (explicit): `await vite.start(port)` ... `await vite.stop()`.

- Runs `<plugin>/ui/node_modules/.bin/vite --host 127.0.0.1 --port N --strictPort --cors --clearScreen false` in
  `<plugin>/ui` through `Child.spawn` (own process group, PDEATHSIG, pid records). The command and the arguments
  are configurable (`[plugins.<id>.vite] command = [...]`, `args = [...]`, `{port}` is replaced in both).
- No `ui/` dir: nothing to run, `viteStatus` stays "idle", no error.
- No `node_modules`: an error telling the user to run `npm ci` there, or, with `[plugins.<id>.vite] install = true`,
  `npm ci` is run first (its output as `vite` log lines).
- Readiness: `viteStatus` "starting" -> "ready" (Omniview's value) only once an HTTP request to the port is answered
  (Vite's own `Accept: text/x-vite-ping` probe, polled with a short backoff, and at once when Vite prints its
  banner); then `viteURL` = http://127.0.0.1:N. No answer within `start_timeout` (30 s) -> "error", the last stderr lines in
  `lastError`, an error event, and the restart policy below.
- Logs: stdout lines -> `vite` log events at level info, stderr -> level error (blank lines dropped; ANSI removed by
  ctx.log).
- Port taken: Vite exits before ready with "Port N is already in use" (another program bound the port after the
  broker checked it): the broker is asked for its next free port (a PortSwap on the worker link, so its allocator
  stays right) and Vite starts there at once, at most PORT_RETRIES times; without another port it is an ordinary
  failure (reported, retried on the same port after the backoff).
- Crashes (Vite exits while we did not ask it to, before or after ready): "error", an error event with its last lines
  (and the file/line/column of any diagnostic Vite printed), then a restart on the same port after an exponential
  backoff (`[vite] restart_backoff` 1 s doubling up to `restart_backoff_max` 30 s; back to the first delay once Vite
  had been running for `restart_reset` 60 s). `stop()` cancels a pending restart.
- Errors Vite reports while it keeps running (a vite.config.* that fails to reload, a failed dependency pre-bundle)
  become error events with file/line/column when Vite prints them. Module transform/HMR errors stay in the browser
  overlay (they are only logged).
- Stop: TERM to the process group, `stop_grace` (5 s), KILL to the group.

The HMR path is untouched: the browser (or any client) talks to Vite's own HTTP server and WebSocket directly.
"""
from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import time
from collections import deque
from typing import Any

import psutil

from omnibroker.protocol import BuildError, CommandError
from omnibroker.settings import ViteSettings

from .children import Child
from .context import PluginContext, strip_ansi
from .runtime import Backoff
from .state import ViteStatus as S

HOST = "127.0.0.1"
DEFAULT_ARGS = ["--host", HOST, "--port", "{port}", "--strictPort", "--cors", "--clearScreen", "false"]
LAST_LINES = 15                      # lines of Vite output quoted in lastError / error events
BLOCK_QUIET = 0.2                    # s of silence that ends a block of error output Vite printed while running
BLOCK_MAX_LINES = 200
PORT_RETRIES = 3                     # times Vite moves to another port when another program took its port
_PORT_IN_USE = re.compile(r"Port (\d+) is already in use")

# Lines that start a block of errors Vite reports while it keeps running (not module transform errors).
_BLOCK_TRIGGER = re.compile(
    r"failed to load config from|error when starting dev server|server restart failed"
    r"|error while updating dependencies|Failed to resolve dependency|Failed to scan for dependencies"
    r"|Error during dependency optimization|dependency pre-bundl\w* fail|optimizer\b.*\berror"
    r"|Build failed with \d+ error|Transform failed with \d+ error|(?-i:\[ERROR\])",
    re.IGNORECASE)
# ...but module transform errors (served to the browser overlay) are only logged
_MODULE_ERROR = re.compile(r"Internal server error|Pre-transform error|hmr (?:update|invalidate)", re.IGNORECASE)
_CONFIG_FAIL = re.compile(r"failed to load config from (?P<file>\S+)", re.IGNORECASE)
# rolldown / oxc diagnostics:  [PARSE_ERROR] message   ...   ╭─[ path:line:col ]
_DIAG_HEAD = re.compile(r"^\s*(?:[✘×xX]\s*)?\[(?P<code>[A-Z][A-Z0-9_]*)\]\s*(?P<msg>.+?)\s*$")
_DIAG_LOC = re.compile(r"[╭┌]\s*─*\s*\[\s*(?P<file>[^\]]+?):(?P<line>\d+):(?P<col>\d+)\s*\]")
# esbuild (Vite <= 7):  ✘ [ERROR] message  /  (blank)  /      path:line:col:
_ESBUILD_LOC = re.compile(r"^\s+(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<col>\d+):\s*$")
# esbuild summary / generic:  path:line:col: ERROR: message
_INLINE = re.compile(r"^\s*(?P<file>[^\s:][^:]*?):(?P<line>\d+):(?P<col>\d+):\s*(?:ERROR:|error:)\s*(?P<msg>.+)$")
# Vite's own error print:  File: /abs/path:line:col
_FILE_LINE = re.compile(r"^\s*File:\s*(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)\s*$")
_JS_ERROR = re.compile(r"^\s*(?:Uncaught\s+)?(?P<name>[A-Za-z]*Error)(?:\s*\[[A-Z_]+\])?:\s*(?P<msg>.+)$")
_STACK = re.compile(r"^\s+at\s")


def _position(text: str | int) -> int:
    """A line or column number as printed: 0 when unreadable (e.g. more digits than int() takes), at most int32."""
    try:
        return min(max(int(text), 0), 2**31 - 1)
    except (TypeError, ValueError):
        return 0


def parse_vite_errors(lines: list[str], root: str) -> list[BuildError]:
    """Structured errors from a block of Vite output (ANSI already removed or not): located diagnostics first;
    without any, the first JS error line (attached to the config file when the config failed to load)."""
    clean = [strip_ansi(line).rstrip() for line in lines]
    config_file = ""
    located: list[BuildError] = []
    seen: set[tuple] = set()
    pending_msg = ""        # the message of the diagnostic whose location we are waiting for
    first_error = ""

    def add(file: str, line: str | int, col: str | int, msg: str) -> None:
        path = file.strip()
        if path.startswith("file://"):
            path = path[len("file://"):]
        if path and not os.path.isabs(path):
            path = os.path.normpath(os.path.join(root, path))
        err = BuildError(file=path, line=_position(line), column=_position(col), message=msg.strip() or "error")
        key = (err.file, err.line, err.column, err.message)
        if key not in seen:
            seen.add(key)
            located.append(err)

    for text in clean:
        m = _CONFIG_FAIL.search(text)
        if m:
            config_file = m.group("file")
            continue
        if _STACK.match(text):
            continue
        m = _DIAG_HEAD.match(text)
        if m and not m.group("code").isdigit():
            pending_msg = f"[{m.group('code')}] {m.group('msg')}"
            continue
        m = _DIAG_LOC.search(text) or _ESBUILD_LOC.match(text) or _FILE_LINE.match(text)
        if m:
            add(m.group("file"), m.group("line"), m.group("col"), pending_msg or first_error)
            pending_msg = ""
            continue
        m = _INLINE.match(text)
        if m:
            add(m.group("file"), m.group("line"), m.group("col"), m.group("msg"))
            continue
        m = _JS_ERROR.match(text)
        if m and not first_error:
            first_error = f"{m.group('name')}: {m.group('msg')}"
    if located:
        return located
    if config_file or first_error:
        msg = first_error or "failed to load the Vite config"
        if config_file:
            msg = f"failed to load config from {config_file}: {msg}"
        file = config_file if not config_file or os.path.isabs(config_file) else os.path.join(root, config_file)
        return [BuildError(file=file, message=msg)]
    return []


class ViteServer:
    """One plugin UI's Vite dev server, supervised. Create once per worker; start/stop as often as needed."""

    POLL_FIRST = 0.02              # readiness probe: first interval, growth, cap (s)
    POLL_GROWTH = 1.5
    POLL_CAP = 0.25
    PROBE_TIMEOUT = 2.0

    def __init__(self, ctx: PluginContext):
        self.ctx = ctx
        self.part = ctx.vite
        self.ui_dir = os.path.join(ctx.dir, "ui")
        self.port = 0
        self.child: Child | None = None
        self.restart_count = 0              # unexpected exits of Vite since the last start()
        self.ready_time: float | None = None    # seconds from spawn to the first HTTP answer, last start
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._banner = asyncio.Event()      # Vite printed its ready banner: probe now
        self._stderr: deque[str] = deque(maxlen=LAST_LINES)
        self._output: deque[str] = deque(maxlen=BLOCK_MAX_LINES)   # this incarnation, both streams
        self._block: list[str] = []
        self._block_timer: asyncio.TimerHandle | None = None
        self._last_errors: list[BuildError] | None = None
        self._settled_event = asyncio.Event()  # the current start attempt is over: running, or failed

    @property
    def settings(self) -> ViteSettings:
        return self.ctx.settings.vite_settings

    @property
    def has_ui(self) -> bool:
        return os.path.isdir(self.ui_dir)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.running else None

    @property
    def status(self) -> str:
        return self.part.state.value

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}" if self.port else ""

    def command(self, port: int) -> list[str]:
        """The argv Vite is started with (for a port)."""
        cmd = self.settings.command
        if cmd is None:
            argv = [os.path.join(self.ui_dir, "node_modules", ".bin", "vite")]
        elif isinstance(cmd, str):
            argv = shlex.split(cmd)
        else:
            argv = [str(a) for a in cmd]
        args = self.settings.args
        args = DEFAULT_ARGS if args is None else (shlex.split(args) if isinstance(args, str) else list(args))
        return [str(a).replace("{port}", str(port)) for a in argv + list(args)]

    # --- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self, port: int) -> None:
        """Start Vite on `port` (idempotent for the same port; another port restarts it there).

        Returns once the supervision is under way: `viteStatus` is "starting" (or "idle" without a ui/ dir, or
        "error" when it cannot run at all). Use `wait_running()` to wait for readiness."""
        if not isinstance(port, int) or not (0 < port < 65536):
            raise ValueError(f"invalid Vite port {port!r}")
        if self._task is not None and not self._task.done():
            if port == self.port:
                return
            await self.stop()
        self._stopping = False
        self.restart_count = 0
        self._settled_event.clear()
        if not self.has_ui:
            self.port = 0
            self.part.change_state(S.IDLE, vitePort=0)
            self._settled_event.set()
            return
        self.port = port
        self.part.change_state(S.STARTING, vitePort=port)
        self._task = asyncio.create_task(self._supervise(port), name=f"vite-{self.ctx.id}")

    async def stop(self) -> None:
        """Stop Vite (TERM group, grace, KILL group) and cancel any pending restart. Idempotent."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # The cancellation alone is not enough: Python 3.11's wait_for (under http_answers, child waits) drops a
            # cancellation that arrives as its inner future completes. The supervision loop also checks _stopping
            # after each wait, and stopping Vite here ends any wait on it, so the task ends either way.
            await self._stop_child()
            await asyncio.gather(task, return_exceptions=True)
        await self._stop_child()
        self._cancel_block()
        was_active = self.part.state is not S.IDLE or self.port
        self.port = 0
        self._settled_event.set()
        # a crash report of a Vite we no longer run is stale
        if was_active:
            self.part.change_state(S.STOPPED, vitePort=0, lastError="")
        elif self.part.error:
            self.part.set_error("")

    async def restart(self) -> None:
        port = self.port
        await self.stop()
        if port:
            await self.start(port)

    async def wait_running(self, timeout: float | None = None) -> bool:
        """Wait until Vite answers HTTP (True), or until this start attempt failed / timed out (False)."""
        if self.part.state is S.READY:
            return True
        try:
            await asyncio.wait_for(self._settled_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self.part.state is S.READY

    # --- supervision -------------------------------------------------------------------------------------------
    async def _supervise(self, port: int) -> None:
        backoff = Backoff(self.settings.restart_backoff, self.settings.restart_backoff_max, self.settings.restart_reset)
        if not await self._prepare():
            self._settled_event.set()
            return
        moves = 0
        while not self._stopping:
            self._settled_event.clear()
            self._change(S.STARTING, vitePort=port)         # ERROR (after the backoff) -> STARTING
            outcome, detail, ran = await self._run_once(port)
            if outcome == "fatal" or self._stopping:
                self._settled_event.set()
                return
            if outcome == "port-in-use":
                new_port = 0
                if moves < PORT_RETRIES:
                    moves += 1
                    try:
                        new_port = await self.ctx.sink.other_port("vite", port)
                    except CommandError as e:
                        detail += f"; no other port: {e.reason}"
                if self._stopping:
                    return
                if new_port:
                    self.ctx.log("manager", "warn", f"vite: port {port} is in use by another program: moving to "
                                                    f"port {new_port} (the broker holds it now; move {moves} of "
                                                    f"{PORT_RETRIES})")
                    port = self.port = new_port
                    continue
                # no other port: an ordinary failure, tried again on this port after the backoff
                self._report_exit(f"Vite exited before it was ready: {detail}")
                self._settled_event.set()
            backoff.ran(ran)
            delay = backoff.next()
            self.restart_count += 1
            self.part.count_restart()
            self.ctx.log("manager", "warn", f"vite: restarting in {delay:g} s ({detail})")
            await asyncio.sleep(delay)          # stop() cancels us here: no restart

    async def _run_once(self, port: int) -> tuple[str, str, float]:
        """One Vite incarnation. Returns (outcome, detail, seconds it served): outcome "fatal" (cannot run: no
        restart), "failed" (exited before ready or timed out), "port-in-use" (exited before ready saying another
        program has the port: not reported yet) or "exited" (crashed after ready)."""
        argv = self.command(port)
        self._stderr.clear()
        self._output.clear()
        self._banner.clear()
        self._cancel_block()
        env = dict(os.environ)
        env.update({k: str(v) for k, v in self.settings.env.items()})
        env.setdefault("BROWSER", "none")
        t0 = time.monotonic()
        try:
            self.child = child = await Child.spawn("vite", argv, cwd=self.ui_dir, env=env, on_line=self._on_line,
                                                   registry=self.ctx.children, tail=BLOCK_MAX_LINES)
        except OSError as e:
            self._fail(f"cannot run Vite ({' '.join(argv)}): {e}", [BuildError(message=f"cannot run Vite: {e}")])
            return "fatal", str(e), 0.0
        if self._stopping:
            return "fatal", "stopped", 0.0
        self.ctx.log("manager", "info", f"vite: started pid {child.pid} on port {port}: {' '.join(argv)}")
        timeout = self.settings.start_timeout
        ready = await self._await_ready(child, port, timeout)
        if self._stopping:
            return "fatal", "stopped", 0.0
        if ready is True:
            self.ready_time = time.monotonic() - t0
            ready_at = time.monotonic()
            self._last_errors = None
            self._change(S.READY, vitePort=port, lastError="")     # STARTING -> READY
            self._settled_event.set()
            rc = await child.wait()
            if self._stopping:
                return "fatal", "stopped", 0.0
            self._report_exit(f"Vite exited unexpectedly (code {_rc_text(rc)})")
            return "exited", f"exit code {_rc_text(rc)}", time.monotonic() - ready_at
        if ready is False:
            rc = await child.wait()             # also drains its last output
            if self._stopping:
                return "fatal", "stopped", 0.0
            if any(_PORT_IN_USE.search(line) for line in self._output):
                return "port-in-use", f"port {port} in use", 0.0
            self._report_exit(f"Vite exited before it was ready (code {_rc_text(rc)})")
            self._settled_event.set()
            return "failed", f"exit code {_rc_text(rc)}", 0.0
        await self._stop_child()
        self._report_exit(f"Vite did not answer on port {port} within {timeout:g} s")
        self._settled_event.set()
        return "failed", "start timeout", 0.0

    async def _await_ready(self, child: Child, port: int, timeout: float) -> bool | None:
        """True once an HTTP request to the port is answered while the child runs; False if the child exited;
        None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.POLL_FIRST
        exited = asyncio.ensure_future(child.wait())
        try:
            while not self._stopping:
                if not child.running:
                    return False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                if await http_answers(port, min(self.PROBE_TIMEOUT, remaining)):
                    if not child.running:
                        return False
                    if _listens(child.pid, port):
                        return True
                    # someone else answers on our port (Vite will exit with "port in use"): keep waiting
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                banner = asyncio.ensure_future(self._banner.wait())
                try:
                    await asyncio.wait({exited, banner}, timeout=min(interval, remaining),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    banner.cancel()
                self._banner.clear()
                interval = min(interval * self.POLL_GROWTH, self.POLL_CAP)
        finally:
            if not exited.done():
                exited.cancel()

    async def _prepare(self) -> bool:
        """Check (or install) node_modules and the Vite binary. False after reporting a fatal error."""
        nm = os.path.join(self.ui_dir, "node_modules")
        if not os.path.isdir(nm):
            if not self.settings.install:
                self._fail(f"{nm} is missing: run `npm ci` in {self.ui_dir} (or set "
                           f"[plugins.{self.ctx.id}.vite] install = true to let omni run it)",
                           [BuildError(file=os.path.join(self.ui_dir, "package.json"),
                                       message=f"node_modules is missing: run `npm ci` in {self.ui_dir}")])
                return False
            if not await self._npm_ci():
                return False
        if self.settings.command is None:
            vite_bin = os.path.join(nm, ".bin", "vite")
            if not os.path.exists(vite_bin):
                self._fail(f"{vite_bin} not found: Vite is not installed in {self.ui_dir}; add it to the "
                           f"devDependencies and run `npm ci` (or `npm install`) there",
                           [BuildError(file=os.path.join(self.ui_dir, "package.json"),
                                       message="vite is not installed (node_modules/.bin/vite missing)")])
                return False
        return True

    async def _npm_ci(self) -> bool:
        npm = shutil.which("npm")
        if npm is None:
            self._fail(f"node_modules is missing in {self.ui_dir} and npm is not on PATH to install it",
                       [BuildError(message="npm not found: cannot install the UI dependencies")])
            return False
        self.ctx.log("manager", "info", f"vite: running npm ci in {self.ui_dir}")

        def on_line(stream: str, line: str) -> None:
            if line.strip():
                self.ctx.log("vite", "info" if stream == "stdout" else "warn", line)

        try:
            child = await Child.spawn("npm-ci", [npm, "ci", "--no-audit", "--no-fund"], cwd=self.ui_dir,
                                      on_line=on_line, registry=self.ctx.children)
        except OSError as e:
            self._fail(f"cannot run npm ci: {e}", [BuildError(message=f"cannot run npm ci: {e}")])
            return False
        self.child = child          # if stop() cancels us meanwhile, it stops npm too
        try:
            rc = await asyncio.wait_for(child.wait(), self.settings.install_timeout)
        except asyncio.TimeoutError:
            await child.stop(2.0)
            rc = None
        self.child = None
        if rc != 0:
            tail = child.tail_text(LAST_LINES)
            self._fail(f"npm ci failed in {self.ui_dir} ({'timeout' if rc is None else f'code {rc}'}):\n{tail}",
                       [BuildError(file=os.path.join(self.ui_dir, "package.json"),
                                   message=f"npm ci failed:\n{tail}")])
            return False
        return True

    async def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            await child.stop(self.settings.stop_grace)

    # --- output ------------------------------------------------------------------------------------------------
    def _on_line(self, stream: str, line: str) -> None:
        text = strip_ansi(line)
        if not text.strip():
            return
        self._output.append(text)
        if stream == "stderr" and not _STACK.match(text):     # stack frames say little to a plugin author
            self._stderr.append(text)
        self.ctx.log("vite", "info" if stream == "stdout" else "error", line)
        if stream == "stdout":
            if "Local:" in text or "ready in" in text:
                self._banner.set()
            elif "server restarted" in text:
                self._last_errors = None    # a config fixed: the same error, if it comes back, is news again
        # errors Vite reports while it keeps running
        if self._block or (_BLOCK_TRIGGER.search(text) and not _MODULE_ERROR.search(text)):
            if len(self._block) < BLOCK_MAX_LINES:
                self._block.append(text)
            if self._block_timer is not None:
                self._block_timer.cancel()
            self._block_timer = asyncio.get_running_loop().call_later(BLOCK_QUIET, self._flush_block)

    def _flush_block(self) -> None:
        block, self._block = self._block, []
        self._block_timer = None
        if not block or self.child is None or not self.child.running:
            return          # the process is gone: its exit report covers these lines
        errors = parse_vite_errors(block, self.ui_dir) or [BuildError(message="\n".join(block[:LAST_LINES]))]
        self._emit_errors(errors)

    def _cancel_block(self) -> None:
        if self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        self._block = []

    def _last_lines(self) -> str:
        lines = list(self._stderr) or list(self._output)[-LAST_LINES:]
        return "\n".join(lines[-LAST_LINES:])

    def _report_exit(self, what: str) -> None:
        self._cancel_block()
        last = self._last_lines()
        errors = parse_vite_errors(list(self._output), self.ui_dir)
        if errors:
            e = errors[0]
            where = f"{e.file}:{e.line}:{e.column}: " if e.file and e.line else (f"{e.file}: " if e.file else "")
            what = f"{what}: {where}{e.message}"
        summary = f"{what}" + (f"\n{last}" if last else "")
        self._fail(summary, errors or [BuildError(message=summary)], force=True)

    def _fail(self, message: str, errors: list[BuildError], force: bool = False) -> None:
        self.ctx.log("manager", "error", f"vite: {message}")
        self._change(S.ERROR, lastError=message)
        self._emit_errors(errors, force=force)

    def _emit_errors(self, errors: list[BuildError], force: bool = False) -> None:
        if not force and errors == self._last_errors:
            return
        self._last_errors = errors
        self.ctx.errors(errors)

    def _change(self, state: S, **fields: Any) -> None:
        """The supervision's changes; none once stop() began (stop() has the last word: STOPPED)."""
        if not self._stopping:
            self.part.change_state(state, **fields)


async def http_answers(port: int, timeout: float = 1.0) -> bool:
    """True when something answers an HTTP request on 127.0.0.1:port (Vite's ping: 204, no transform work)."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/x-vite-ping\r\n"
                     f"Connection: close\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout)
        return status.startswith(b"HTTP/")
    except (OSError, asyncio.TimeoutError, ConnectionError):
        return False
    finally:
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass


def _listens(pid: int, port: int) -> bool:
    """Does the process `pid` or one of its descendants listen on `port`? (True when we cannot tell.)"""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            return True
    return False


def _rc_text(rc: int | None) -> str:
    if rc is None:
        return "?"
    if rc < 0:
        import signal
        try:
            return f"{rc}, {signal.Signals(-rc).name}"
        except ValueError:
            return str(rc)
    return str(rc)
