"""omnictl: a thin CLI over the client library; one subcommand per control command (built from the command table),
plus `tail` (live events) and `run-external`.

Exit codes: 0 ok, 1 the broker answered with an error, 2 usage, 3 no service, or the broker did not answer.
Which part did not answer is said in words: no service at all (no socket, or refused, and no supervisord: at once),
the broker (restarting: waited for; silent: after the retries), or a plugin's worker (the broker's `timeout` /
`worker_unavailable` reply, which names the worker program and its log).
One call costs little more than the interpreter start: over an ipc endpoint the request goes through omnibroker.zmtp
(stdlib sockets; no pyzmq, msgspec or asyncio import, no ZeroMQ context to start and stop); TCP endpoints (CURVE),
`tail` and any surprise on that path use the pyzmq client library.
"""
from __future__ import annotations

import argparse
import json
import sys

TYPE_CHECKING = False       # see commands/base.py
if TYPE_CHECKING:
    from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
RETRIES = 3              # tries per call in all (Lazy Pirate), whichever transport makes them
WORKER_SILENT = ("timeout", "worker_unavailable")     # error codes meaning the broker answered but the worker did not

STATE_COLUMNS = ("pluginID", "mode", "workerStatus", "viteStatus", "vitePort", "goStatus", "grpcConnected",
                 "lastBuildTime", "lastError")


def _duration(ns: int) -> str:
    """Nanoseconds (Go's time.Duration) as `812 ms`, `4.92 s` or `1 min 35 s`."""
    if not ns:
        return "none"
    seconds = ns / 1e9
    if seconds < 59.995:
        return f"{seconds * 1000:.0f} ms" if seconds < 0.9995 else f"{seconds:.2f} s"
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60} s"


def _when(stamp: str) -> str:
    """An RFC 3339 time as local time and age; "never" for Go's zero time or none."""
    if not stamp or stamp.startswith("0001-01-01"):
        return "never"
    import datetime as dt
    try:
        t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    age = (dt.datetime.now(dt.timezone.utc) - t).total_seconds()
    ago = f"{int(age)} s ago" if age < 120 else f"{int(age // 60)} min ago" if age < 7200 else \
        f"{int(age // 3600)} h ago"
    return f"{t.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({ago})"


def _clock(stamp: str) -> str:
    """A log entry's RFC 3339 time as local wall-clock time with milliseconds."""
    import datetime as dt
    try:
        t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return t.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _word(key: str, value: Any) -> str:
    """A state field in plain words with units."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "lastBuildDuration":
        return _duration(value)
    if key == "lastBuildTime":
        return _when(value)
    if (key.endswith("Pid") or key.endswith("Port")) and not value:
        return "none"
    if value == "" or value is None:
        return "none" if key == "lastError" else ""
    return str(value)


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    cells = [[_word(c, r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _config_line(result: Any) -> str:
    """omni.toml's problems, as `ping` and `list` report them (empty when none)."""
    error = result.get("configError") if isinstance(result, dict) else ""
    return f"\nconfig error: {error}" if error else ""


def _human(command: str, result: Any) -> str:
    if command == "list":
        table = _table(result.get("plugins", []), STATE_COLUMNS) if result.get("plugins") else "no plugins"
        return table + _config_line(result)
    if command == "snapshot":
        head = f"epoch {result['epoch']} seq {result['seq']}"
        return head + "\n" + _table(list(result.get("plugins", {}).values()), STATE_COLUMNS)
    if command == "logs":
        lines = [f"{_clock(e['timestamp'])} {e['source']:<8} {e['level']:<5} {e['message']}"
                 for e in result.get("entries", [])]
        if result.get("omitted"):
            lines.insert(0, f"({result['omitted']} older entries left out: a reply is limited to 1 MiB)")
        return "\n".join(lines)
    if command == "rebuild":
        return f"{result['pluginID']}: rebuild accepted; the build's progress and errors arrive as events " \
               f"(omnictl tail {result['pluginID']})"
    if isinstance(result, dict) and "pluginID" in result:
        return "\n".join(f"{k:<18} {_word(k, v)}" for k, v in result.items())
    if command == "ping":
        return f"pong: epoch {result['epoch']}, version {result['version']}" + _config_line(result)
    return json.dumps(result, indent=2)


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """When argv names a control command, only that subcommand is built (each costs ~0.5 ms of a ~40 ms call);
    otherwise (help, tail, a typo) all of them, so help and errors list every command."""
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(prog="omnictl", description="control the omni dev-server broker")
    _global_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    named = next((a.replace("-", "_") for i, a in enumerate(argv)
                  if not a.startswith("-") and (i == 0 or argv[i - 1] not in ("--endpoint", "--timeout"))), "")
    for name, cmd in COMMANDS.items():
        if named in COMMANDS and name != named:
            continue
        p = sub.add_parser(name.replace("_", "-"), help=(cmd.__doc__ or "").split("\n")[0], description=cmd.__doc__)
        p.set_defaults(command_name=name)
        _global_flags(p, defaults=False, skip=frozenset(cmd.properties))
        for key, prop in cmd.properties.items():
            if prop.positional:
                p.add_argument(key, nargs=None if prop.required else "?", help=prop.help)
            elif prop.type is bool:
                p.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=None, help=prop.help)
            elif prop.type is dict:
                p.add_argument(f"--{key}", type=json.loads, help=prop.help + " (JSON)")
            else:
                conv = float if isinstance(prop.type, tuple) else prop.type
                p.add_argument(f"--{key}", type=conv, help=prop.help)
    if named in COMMANDS:
        return parser
    tail = sub.add_parser("tail", help="print events as they happen (after a snapshot)")
    _global_flags(tail, defaults=False)
    tail.add_argument("plugin", nargs="?", help="only this plugin")
    tail.add_argument("--topic", action="append", default=[], help="only this topic (repeatable)")
    tail.set_defaults(command_name="tail")
    ext = sub.add_parser("run-external", help="run a go-plugin binary yourself and publish its .devinfo",
                         add_help=False)
    ext.set_defaults(command_name="run-external")
    sub.add_parser("curve-keygen", help="create CURVE keys for TCP endpoints (omnictl curve-keygen DIR)")
    sub.add_parser("dashboard", help="print the dashboard's URL (with its token) to open in a browser") \
        .set_defaults(command_name="dashboard")
    return parser


def _global_flags(parser: argparse.ArgumentParser, defaults: bool, skip: frozenset[str] = frozenset()) -> None:
    """--json, --endpoint and --timeout, accepted before the subcommand (where their defaults are set) and after it
    (where an absent flag must not reset what was given before: argparse.SUPPRESS). A command property of the same
    name (invoke's `timeout`) wins after the subcommand."""
    flags = (("json", dict(action="store_true", help="print the raw result as JSON"), False),
             ("endpoint", dict(help="control socket (default: $OMNI_CONTROL or ipc://<runtime>/control.sock)"), None),
             ("timeout", dict(type=float, help="seconds per try (default 5)"), 5.0))
    for name, options, default in flags:
        if name in skip:
            continue
        parser.add_argument(f"--{name}", dest=f"ctl_{name}", default=default if defaults else argparse.SUPPRESS,
                            **options)


def _tail(args: argparse.Namespace, client) -> int:
    from .client import Subscriber
    sub = Subscriber(client, topics=tuple(args.topic))
    try:
        for ev in sub.events():
            if args.plugin and ev.meta.pluginID != args.plugin:
                continue
            if args.ctl_json:
                from .protocol import to_builtins
                print(json.dumps({"topic": ev.topic, "payload": ev.payload, "meta": to_builtins(ev.meta)}),
                      flush=True)
            else:
                print(f"{ev.meta.seq:>7} {ev.meta.pluginID:<16} {ev.topic:<28} {_event_summary(ev)}", flush=True)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _event_summary(ev) -> str:
    p = ev.payload
    if ev.topic.endswith("/status"):
        return f"mode={p['mode']} vite={p['viteStatus']}:{p['vitePort']} go={p['goStatus']} " \
               f"grpc={_word('grpcConnected', p['grpcConnected'])} worker={p.get('workerStatus')}"
    if ev.topic.endswith("/log"):
        return " | ".join(f"[{e['source']}/{e['level']}] {e['message']}" for e in p)
    if ev.topic.endswith("/error"):
        return "; ".join(f"{e['file']}:{e['line']}:{e['column']}: {e['message']}" for e in p["errors"])
    return json.dumps(p)


def _dashboard() -> int:
    """`omnictl dashboard`: the URL the bridge wrote to <runtime>/bridge.url (0600: only its user reads the token),
    once something listens on its port (a bridge killed -9 leaves a stale file)."""
    import os
    import socket
    from urllib.parse import urlsplit

    from .locations import runtime_dir
    path = os.path.join(runtime_dir(), "bridge.url")
    try:
        with open(path) as f:
            url = f.read().strip()
        port = urlsplit(url).port
    except FileNotFoundError:
        print(f"omnictl: the bridge is not up (no {path}); start omni with `make run`", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (OSError, ValueError) as e:
        print(f"omnictl: cannot read the dashboard's URL from {path}: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        socket.create_connection(("127.0.0.1", port or 0), timeout=2).close()
    except OSError as e:
        print(f"omnictl: the bridge is not up ({path} names port {port}, which does not answer: {e.strerror or e})",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(url)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "run-external" in argv:
        i = argv.index("run-external")
        # The worker side runs it (omniworker/run_external.py): this process becomes it, same pid for signals.
        import os
        os.execv(sys.executable, [sys.executable, "-m", "omniworker.run_external", *argv[i + 1:]])
    if argv[:1] == ["curve-keygen"]:
        if len(argv) != 2:
            print("usage: omnictl curve-keygen DIR", file=sys.stderr)
            return EXIT_USAGE
        from .security import keygen
        public, secret = keygen(argv[1])
        print(f"wrote {public} and {secret}; set OMNI_CURVE_DIR={argv[1]} for the service and its clients")
        return EXIT_OK
    args = _build_parser(argv).parse_args(argv)
    if args.command_name == "dashboard":
        return _dashboard()
    if args.command_name == "tail":
        from .client import BrokerUnavailable, Client
        client = Client(args.ctl_endpoint, timeout=args.ctl_timeout)
        try:
            return _tail(args, client)
        except BrokerUnavailable as e:
            print(f"omnictl: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        finally:
            client.close()
    from .commands import COMMANDS
    cmd = COMMANDS[args.command_name]
    props = {k: getattr(args, k) for k in cmd.properties if getattr(args, k, None) is not None}
    if "path" in props:     # the broker runs elsewhere: a path means what it means in this shell
        import os
        props["path"] = os.path.abspath(os.path.expanduser(props["path"]))
    wait = cmd.timeout + 2 if cmd.forward else args.ctl_timeout
    try:
        reply, tries = _call_stdlib(args.ctl_endpoint, cmd.name, props, wait)
    except NoListener as absent:
        why = _wait_for_broker(absent.path, RETRIES * args.ctl_timeout)
        if why:
            print(f"omnictl: {why}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        try:
            reply, tries = _call_stdlib(args.ctl_endpoint, cmd.name, props, wait)
        except NoListener:      # it went away again at once: the pyzmq client's retries decide
            reply, tries = None, 0
    if reply is None:
        from .client import BrokerUnavailable
        try:
            reply = _call_pyzmq(args.ctl_endpoint, args.ctl_timeout, cmd.name, props, wait, RETRIES - tries)
        except BrokerUnavailable as e:
            print(f"omnictl: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    if reply.get("status") != "ok":
        code, reason = reply.get("code", ""), reply.get("reason", "")
        if args.ctl_json:
            print(json.dumps({"status": "error", "code": code, "reason": reason}))
        elif code in WORKER_SILENT and "plugin" in props:
            print(f"omnictl {cmd.name}: the broker answered; the worker for {props['plugin']!r} did not ({code}): "
                  f"{reason}", file=sys.stderr)
        else:
            print(f"omnictl {cmd.name}: {code}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    result = reply.get("result")
    print(json.dumps(result, indent=2) if args.ctl_json else _human(cmd.name, result))
    return EXIT_OK


class NoListener(Exception):
    """Nothing accepts connections on the control socket: no file there, or the connection was refused."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


def _wait_for_broker(control: str, budget: float) -> str:
    """After NoListener: "" once the control socket accepts connections, else why not, in words.

    A supervisord listening in the same runtime dir means the broker is (re)starting: wait for it, up to `budget`
    seconds. No supervisord means no service: say so at once, with how to start one."""
    import os
    import time

    from . import locations, zmtp
    runtime = os.path.dirname(control) or locations.runtime_dir()
    if not zmtp.listening(os.path.join(runtime, "supervisor.sock")):
        return (f"no omni service at {runtime}: start it with `supervisord -c {locations.SUPERVISOR_CONF}` "
                f"(or `make run` in {locations.REPO}); nothing accepts connections on {control}")
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if zmtp.listening(control):
            return ""
        time.sleep(0.05)        # the broker binds its socket when it is up; nothing to wait on but the file
    return (f"supervisord runs at {runtime} but its broker did not accept connections on {control} within "
            f"{budget:g}s; see {runtime}/omnibroker.log and `supervisorctl -c {locations.SUPERVISOR_CONF} status`")


def _call_stdlib(endpoint: str | None, command: str, props: dict, wait: float) -> tuple[dict | None, int]:
    """(reply as a dict, tries used) over omnibroker.zmtp, without importing pyzmq or msgspec. The reply is None
    when that path cannot be used (not ipc, a surprise on the wire, no answer in time): then the pyzmq client takes
    over with the tries left (Lazy Pirate) and its error messages. Raises NoListener when nothing listens."""
    import os

    from . import locations, zmtp
    path = zmtp.ipc_path(endpoint or locations.endpoint("control"))
    if path is None:
        return None, 0
    rid = f"{os.getpid()}-q"
    body = json.dumps({"id": rid, "command": command, "properties": props}, separators=(",", ":")).encode()
    try:
        reply = json.loads(zmtp.request(path, body, wait))
    except TimeoutError:
        return None, 1          # it was sent: that was one try
    except (FileNotFoundError, ConnectionRefusedError):
        raise NoListener(path) from None
    except (OSError, ValueError, zmtp.ZmtpError):
        return None, 0
    if not isinstance(reply, dict) or reply.get("id") not in (rid, None) or reply.get("status") not in ("ok", "error"):
        return None, 0
    return reply, 1


def _call_pyzmq(endpoint: str | None, timeout: float, command: str, props: dict, wait: float,
                retries: int) -> dict:
    from .client import Client
    from .protocol import to_builtins
    with Client(endpoint, timeout=timeout, retries=max(1, retries)) as client:
        return to_builtins(client.request(command, props, wait=wait))


if __name__ == "__main__":
    sys.exit(main())
