"""`omnictl run-external <id> [--vite] -- <command…>` (`python -m omniworker.run_external`): run a go-plugin plugin
yourself, in Mode B.

For plugins whose SDK does not write `.devinfo`: runs any go-plugin binary (or `go run ./pkg`) with the magic cookie
and go-plugin's environment, reads its handshake line from stdout, writes `<home>/plugins/<id>/.devinfo`
atomically (mode 0600) so `omnictl attach <id>` (or a worker already attached) connects to it, forwards the plugin's
output to our stdout/stderr, and removes `.devinfo` when the plugin exits (if it still names the plugin).

The handshake line is parsed and checked by goplugin.py's parser (the one managed mode uses), `.devinfo` is written
and removed by devinfo.py, and the Vite port comes from ports.py's default range.

SIGINT/SIGTERM/SIGHUP are forwarded to the plugin's process group (go-plugin ignores SIGINT, so a SIGTERM follows
after a moment, then SIGKILL after `--grace`). The plugin dies with us even if we are killed (PR_SET_PDEATHSIG).
`--vite` also runs the UI's Vite dev server (`<dir>/ui/node_modules/.bin/vite`) and records its port in `.devinfo`.

The go-plugin handshake (magic cookie, PLUGIN_MIN_PORT/PLUGIN_MAX_PORT) is the plugin's `[handshake]` table as the
broker knows it (omni.toml, or the settings of a plugin added at run time), the same the worker uses in managed mode;
a flag given on the command line wins.

`--debug` runs the command (a binary: build it with `-gcflags=all=-N -l`) under a headless delve on a debug port
(`--debug-port`, default: the first free one of [2345, 2445)) the way managed mode's debug mode does (delve.DelveTarget:
127.0.0.1 only, --only-same-user, --accept-multiclient; delve's own lines skipped before the handshake), prints the
port, and writes `.devinfo` naming the plugin process delve runs. The plugin's exit, delve's, or a signal end both.

`OMNIVIEW_DEV` is removed from the plugin's environment: this command is the only `.devinfo` writer. (The Omniview
SDK's own dev mode cannot stand in for it: it expects go-plugin's 5-field handshake line, so with go-plugin >= 1.5's
6-field line it writes no `.devinfo`, and it writes under `$HOME/.omniview` whatever OMNIVIEW_HOME says.)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys

import psutil

from omnibroker import protocol
from omnibroker.ports import DEBUG_RANGE_END, DEBUG_RANGE_START, DEFAULT_RANGE_END, DEFAULT_RANGE_START, port_is_free
from omnibroker.process import PidWatch, killpg, rc_text, set_pdeathsig, watch_children_with_pidfds
from omnibroker.settings import HandshakeSettings, check_plugin

from .devinfo import DEVINFO_NAME, remove_if_names, write_devinfo
from .goplugin import Handshake, PluginError, looks_like_handshake, parse_handshake

PROG = "omnictl run-external"
VITE_PORTS = range(DEFAULT_RANGE_START, DEFAULT_RANGE_END)
VITE_RANGE_TEXT = f"{DEFAULT_RANGE_START}-{DEFAULT_RANGE_END - 1}"
SUPPORTED_APP_VERSIONS = [1]
MAX_LINE = 64 * 1024


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.stderr.flush()


def pick_vite_port() -> int | None:
    return next((p for p in VITE_PORTS if port_is_free(p)), None)


def pick_debug_port() -> int | None:
    return next((p for p in range(DEBUG_RANGE_START, DEBUG_RANGE_END) if port_is_free(p)), None)


class ConsoleSink:
    """Where delve.DelveTarget's log lines go in run-external: the plugin's output (stdout and stderr, as delve
    relays them) on stderr, omni's own lines (delve's "API server listening at", its errors) prefixed on stderr."""

    def publish(self, topic: str, payload) -> None:
        if topic != protocol.LOG:
            return
        for entry in payload:
            if entry.source == "plugin":
                _write_out(sys.stderr.buffer, (entry.message.rstrip("\n") + "\n").encode())
            else:
                _say(entry.message)


def serving_pid(root_pid: int, hs: Handshake) -> int:
    """The process that listens on the handshake address: the command itself, or a descendant (`go run` execs the
    compiled binary as its child). Falls back to the command's pid."""
    try:
        root = psutil.Process(root_pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return root_pid
    for proc in procs:
        try:
            if hs.network == "unix":
                conns = proc.net_connections(kind="unix")
                if any(c.laddr == hs.addr for c in conns):
                    return proc.pid
            else:
                host, _, port = hs.addr.rpartition(":")
                conns = proc.net_connections(kind="tcp")
                if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == int(port) for c in conns):
                    return proc.pid
        except (psutil.Error, ValueError):
            continue
    return root_pid


def _preexec() -> None:
    set_pdeathsig(signal.SIGKILL)


def _write_out(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.flush()
    except (OSError, ValueError):
        pass        # our stdout went away: keep draining the child anyway


async def _pump(reader: asyncio.StreamReader | None, out, prefix: bytes = b"") -> None:
    if reader is None:
        return
    at_line_start = True
    while True:
        try:
            chunk = await reader.read(65536)
        except (OSError, ValueError):
            return
        if not chunk:
            return
        if prefix:
            lines = chunk.split(b"\n")
            text = b""
            for i, line in enumerate(lines):
                if i:
                    text += b"\n"
                    at_line_start = True
                if line:
                    text += (prefix if at_line_start else b"") + line
                    at_line_start = False
            chunk = text
        _write_out(out, chunk)


def build_parser(with_command: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Run a go-plugin plugin yourself and publish it for external mode (.devinfo).",
        epilog=f"example: {PROG} my-plugin --vite -- go run ./pkg")
    p.add_argument("plugin", help="plugin id (the .devinfo directory name; also the default cookie value)")
    p.add_argument("--vite", action="store_true", help="also run <dir>/ui's Vite dev server and record its port")
    p.add_argument("--vite-port", type=int, default=0, help=f"Vite port (default: the first free in {VITE_RANGE_TEXT})")
    p.add_argument("--dir", default=None, help="plugin source directory, where the command runs (default: cwd)")
    p.add_argument("--cookie-key", default=None,
                   help="go-plugin magic cookie key (default: [handshake] cookie_key in omni.toml, else OMNIVIEW)")
    p.add_argument("--cookie-value", default=None,
                   help="magic cookie value (default: [handshake] cookie_value in omni.toml, else the plugin id)")
    p.add_argument("--min-port", type=int, default=None,
                   help="PLUGIN_MIN_PORT for tcp plugins (default: [handshake] min_port, else 10000)")
    p.add_argument("--max-port", type=int, default=None,
                   help="PLUGIN_MAX_PORT for tcp plugins (default: [handshake] max_port, else 25000)")
    p.add_argument("--handshake-timeout", type=float, default=60.0,
                   help="seconds to wait for the handshake line (go run compiles first; default 60)")
    p.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL at stop")
    p.add_argument("--plugin-version", default="", help="the `version` field written to .devinfo")
    p.add_argument("--debug", action="store_true",
                   help="run the command (a binary built with -gcflags=all=-N -l) under delve, for an IDE to attach")
    p.add_argument("--debug-port", type=int, default=0,
                   help=f"delve's port (default: the first free in {DEBUG_RANGE_START}-{DEBUG_RANGE_END - 1})")
    if with_command:
        p.add_argument("command", nargs=argparse.REMAINDER, help="-- the plugin command and its arguments")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    if "--" in argv:
        i = argv.index("--")
        parser = build_parser(with_command=False)
        args = parser.parse_args(argv[:i])
        args.command = argv[i + 1:]
    else:
        parser = build_parser(with_command=False)
        args = parser.parse_args(argv)
        args.command = []
    if not args.command:
        parser.error("no command: give it after `--`, e.g. -- go run ./pkg")
    if not protocol.valid_plugin_id(args.plugin):
        parser.error(f"invalid plugin id {args.plugin!r}")
    if args.vite_port and not 0 < args.vite_port < 65536:
        parser.error("--vite-port must be a port number")
    if args.debug_port and not 0 < args.debug_port < 65536:
        parser.error("--debug-port must be a port number")
    handshake, note = handshake_settings(args.plugin)
    if note:
        _say(note)
    defaults = {"cookie_key": handshake.cookie_key, "cookie_value": handshake.cookie_value or args.plugin,
                "min_port": handshake.min_port, "max_port": handshake.max_port}
    for flag, value in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    return args


def handshake_settings(plugin: str) -> tuple[HandshakeSettings, str]:
    """(the plugin's typed `[handshake]` settings as the broker's registry has them, a note when they cannot be read).
    Read from the same files the broker reads (omni.toml and the runtime dir's state.json): no broker needed."""
    from omnibroker.registry import Registry
    try:
        registry = Registry(protocol.config_path(), os.path.join(protocol.runtime_dir(), "state.json"))
        record = registry.plugins.get(plugin)
        if record is not None:
            return check_plugin(dict(record.spec.settings))[0].handshake, ""
        problem = registry.config_error
    except (Exception, SystemExit) as e:
        problem = str(e)
    return HandshakeSettings(), (f"cannot read the plugin settings ({problem}): using the default handshake"
                                 if problem else "")


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.dir = os.path.abspath(args.dir or os.getcwd())
        self.devinfo_path = os.path.join(protocol.plugin_home(args.plugin), DEVINFO_NAME)
        self.plugin: asyncio.subprocess.Process | None = None
        self.vite: asyncio.subprocess.Process | None = None
        self.vite_port = 0
        self.written_pid = 0
        self.stop_signal = 0
        self.stopped = asyncio.Event()          # a stop signal came (debug mode waits on it)
        self.refused = False
        self._escalation: list[asyncio.TimerHandle] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        pumps: list[asyncio.Task] = []
        try:
            if self.args.vite:
                rc = await self._start_vite(pumps)
                if rc:
                    return rc
            return await (self._run_debug() if self.args.debug else self._run_plugin(pumps))
        finally:
            for handle in self._escalation:
                handle.cancel()
            if self.written_pid and remove_if_names(self.devinfo_path, self.written_pid):
                _say(f"removed {self.devinfo_path}")
            if self.plugin is not None:
                killpg(self.plugin.pid, signal.SIGKILL)     # leftovers of the plugin's group (go run's binary)
            await self._stop_vite()
            await asyncio.gather(*pumps, return_exceptions=True)

    # --- signals ----------------------------------------------------------------------------------------------
    def _on_signal(self, sig: int) -> None:
        if self.stop_signal:            # a second Ctrl-C: no more patience
            if self.plugin is not None:
                killpg(self.plugin.pid, signal.SIGKILL)
            return
        self.stop_signal = sig
        self.stopped.set()
        _say(f"got {signal.Signals(sig).name}: stopping the plugin")
        if self.plugin is None or self.plugin.returncode is not None:
            return
        pid = self.plugin.pid
        killpg(pid, sig)
        loop = asyncio.get_running_loop()
        if sig != signal.SIGTERM:       # go-plugin ignores SIGINT
            self._escalation.append(loop.call_later(min(2.0, self.args.grace), killpg, pid, signal.SIGTERM))
        self._escalation.append(loop.call_later(self.args.grace, killpg, pid, signal.SIGKILL))

    # --- Vite -------------------------------------------------------------------------------------------------
    async def _start_vite(self, pumps: list[asyncio.Task]) -> int:
        ui = os.path.join(self.dir, "ui")
        vite_bin = os.path.join(ui, "node_modules", ".bin", "vite")
        if not os.path.exists(vite_bin):
            _say(f"--vite: {vite_bin} not found (run `npm install` in {ui})")
            return 2
        port = self.args.vite_port or pick_vite_port()
        if not port:
            _say(f"--vite: no free port in {VITE_RANGE_TEXT}")
            return 2
        if self.args.vite_port and not port_is_free(port):
            _say(f"--vite: port {port} is already in use")
            return 2
        self.vite_port = port
        argv = [vite_bin, "--host", "127.0.0.1", "--port", str(port), "--strictPort", "--cors"]
        self.vite = await asyncio.create_subprocess_exec(
            *argv, cwd=ui, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=_preexec)
        pumps.append(asyncio.create_task(_pump(self.vite.stdout, sys.stdout.buffer, b"vite | ")))
        pumps.append(asyncio.create_task(_pump(self.vite.stderr, sys.stderr.buffer, b"vite | ")))
        _say(f"Vite (pid {self.vite.pid}) on http://127.0.0.1:{port}")
        pumps.append(asyncio.create_task(self._watch_vite(self.vite)))
        return 0

    async def _watch_vite(self, vite: asyncio.subprocess.Process) -> None:
        rc = await vite.wait()
        if not self.stop_signal and (self.plugin is None or self.plugin.returncode is None):
            _say(f"Vite exited with {rc_text(rc)}; the plugin keeps running (the worker shows viteStatus "
                 "\"stopped\")")

    async def _stop_vite(self) -> None:
        if self.vite is None:
            return
        if self.vite.returncode is None:
            killpg(self.vite.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.vite.wait(), 3.0)
            except asyncio.TimeoutError:
                pass
        killpg(self.vite.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.vite.wait(), 3.0)

    # --- the plugin -------------------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("OMNIVIEW_DEV", None)
        env[self.args.cookie_key] = self.args.cookie_value
        env["PLUGIN_PROTOCOL_VERSIONS"] = ",".join(map(str, SUPPORTED_APP_VERSIONS))
        env["PLUGIN_MIN_PORT"] = str(self.args.min_port)
        env["PLUGIN_MAX_PORT"] = str(self.args.max_port)
        if self.vite_port:
            env["OMNIVIEW_VITE_PORT"] = str(self.vite_port)
        return env

    async def _run_plugin(self, pumps: list[asyncio.Task]) -> int:
        try:
            self.plugin = proc = await asyncio.create_subprocess_exec(
                *self.args.command, cwd=self.dir, env=self._env(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                preexec_fn=_preexec, limit=MAX_LINE)
        except OSError as e:
            _say(f"cannot run {self.args.command[0]!r}: {e.strerror or e}")
            return 127
        stderr_tail: list[bytes] = []

        async def pump_stderr() -> None:
            assert proc.stderr is not None
            while True:
                try:
                    line = await proc.stderr.readline()
                except ValueError:
                    line = await proc.stderr.read(MAX_LINE)
                except OSError:
                    return
                if not line:
                    return
                stderr_tail.append(line)
                del stderr_tail[:-20]
                _write_out(sys.stderr.buffer, line)

        pumps.append(asyncio.create_task(pump_stderr()))
        if self.stop_signal:
            self._on_signal_late()
        hs = await self._read_handshake(proc)
        if hs is None:
            rc = await proc.wait()
            await asyncio.gather(*pumps, return_exceptions=True)
            tail = b"".join(stderr_tail).decode("utf-8", "replace")
            if "not meant to be executed directly" in tail or "This binary is a plugin" in tail:
                _say(f"the plugin refused the magic cookie {self.args.cookie_key}="
                     f"{self.args.cookie_value} (go-plugin: 'not meant to be executed directly'); pass the cookie its "
                     f"HandshakeConfig expects with --cookie-key/--cookie-value, or set it in omni.toml's "
                     f"[plugins.{self.args.plugin}.handshake] cookie_key/cookie_value")
            elif not self.stop_signal and not self.refused:
                _say(f"the plugin exited with {rc_text(rc)} before its handshake")
            return _exit_code(rc) or 1
        pumps.append(asyncio.create_task(_pump(proc.stdout, sys.stdout.buffer)))
        if not self.stop_signal:
            self._publish(proc, hs)
        rc = await proc.wait()
        if not self.stop_signal:
            _say(f"the plugin exited with {rc_text(rc)}")
        return _exit_code(rc)

    async def _run_debug(self) -> int:
        """The command under delve (delve.DelveTarget); ends when the plugin or delve exits, or on a signal."""
        from omnibroker.protocol import PluginSpec

        from .context import PluginContext
        from .delve import DelveError, DelveTarget
        binary = shutil.which(self.args.command[0], path=os.environ.get("PATH")) if os.sep not in \
            self.args.command[0] else os.path.join(self.dir, self.args.command[0])
        if not binary or not os.path.isfile(binary):
            _say(f"--debug runs a binary under delve: {self.args.command[0]!r} is not one (build the plugin with "
                 f"`go build -gcflags=all=-N -l -o build/bin/plugin ./pkg` and give that path; `go run` cannot be "
                 f"debugged this way)")
            return 2
        port = self.args.debug_port or pick_debug_port()
        if not port:
            _say(f"--debug: no free port in {DEBUG_RANGE_START}-{DEBUG_RANGE_END - 1}")
            return 2
        ctx = PluginContext(PluginSpec(id=self.args.plugin, path=self.dir), ConsoleSink())
        ctx.children = None                 # not a worker's child: nothing for a worker to reap
        target = DelveTarget(ctx, port)
        try:
            line = await target.start(binary, self._env(), args=self.args.command[1:], cwd=self.dir,
                                      timeout=self.args.handshake_timeout)
            hs = parse_handshake(line, SUPPORTED_APP_VERSIONS)
        except (DelveError, PluginError) as e:
            _say(str(e))
            await target.stop()
            return 1
        pid = target.plugin_pid
        ended = asyncio.Event()
        watch = PidWatch(pid, None, ended.set)
        watch.start()
        try:
            if not self.stop_signal:
                self._publish_info(pid, hs)
                _say(f"debugger: delve on 127.0.0.1:{port} (VS Code: \"request\": \"attach\", \"mode\": "
                     f"\"remote\", \"port\": {port}; GoLand: Go Remote; dlv connect 127.0.0.1:{port})")
            waits = [asyncio.ensure_future(e.wait()) for e in (ended, self.stopped)] + [target.exited]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits[:2]:
                w.cancel()
            if ended.is_set() and not self.stop_signal:
                _say("the plugin exited")
            elif target.exited.done() and not self.stop_signal:
                _say(f"delve exited with {rc_text(target.exited.result() or 0)}")
        finally:
            watch.stop()
            await target.stop(grace=self.args.grace)
        return 0 if self.stop_signal else 1

    def _on_signal_late(self) -> None:
        sig, self.stop_signal = self.stop_signal, 0
        self._on_signal(sig)

    async def _read_handshake(self, proc: asyncio.subprocess.Process) -> Handshake | None:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.handshake_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                _say(f"no go-plugin handshake on stdout within {self.args.handshake_timeout:g}s: stopping the plugin")
                self.refused = True
                killpg(proc.pid, signal.SIGKILL)
                return None
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), remaining)
            except asyncio.TimeoutError:
                continue
            except ValueError:
                raw = await proc.stdout.read(MAX_LINE)
            if not raw:
                return None
            _write_out(sys.stdout.buffer, raw)
            line = raw.decode("utf-8", "replace")
            if not looks_like_handshake(line):
                continue            # something printed before go-plugin's line
            try:
                return parse_handshake(line, SUPPORTED_APP_VERSIONS)
            except PluginError as e:
                self.refused = True
                _say(f"the plugin's handshake is not usable: {e}; stopping it")
                killpg(proc.pid, signal.SIGTERM)
                asyncio.get_running_loop().call_later(self.args.grace, killpg, proc.pid, signal.SIGKILL)
                return None

    def _publish(self, proc: asyncio.subprocess.Process, hs: Handshake) -> None:
        self._publish_info(serving_pid(proc.pid, hs), hs)

    def _publish_info(self, pid: int, hs: Handshake) -> None:
        info = protocol.DevInfo(pid=pid, protocol="grpc", protocolVersion=hs.app, addr=hs.addr,
                                pluginId=self.args.plugin, vitePort=self.vite_port,
                                version=self.args.plugin_version, startedAt=protocol.now_rfc3339())
        try:
            write_devinfo(self.devinfo_path, info)
        except OSError as e:
            _say(f"cannot write {self.devinfo_path}: {e.strerror or e}")
            return
        self.written_pid = pid
        _say(f"{self.args.plugin}: pid {pid} serving {hs.network}:{hs.addr}; wrote {self.devinfo_path}")


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    watch_children_with_pidfds()
    try:
        return asyncio.run(Runner(args).run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
