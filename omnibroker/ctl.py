"""omnictl: a thin CLI over the client library; one subcommand per control command (built from the command table),
plus `tail` (live events) and `run-external`.

Exit codes: 0 ok, 1 the broker answered with an error, 2 usage, 3 the broker did not answer.
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

STATE_COLUMNS = ("pluginID", "mode", "workerStatus", "viteStatus", "vitePort", "goStatus", "grpcConnected",
                 "lastBuildTime", "lastError")


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _human(command: str, result: Any) -> str:
    if command == "list":
        return _table(result.get("plugins", []), STATE_COLUMNS) if result.get("plugins") else "no plugins"
    if command == "snapshot":
        head = f"epoch {result['epoch']} seq {result['seq']}"
        return head + "\n" + _table(list(result.get("plugins", {}).values()), STATE_COLUMNS)
    if command == "logs":
        return "\n".join(f"{e['timestamp']} {e['source']:<8} {e['level']:<5} {e['message']}"
                         for e in result.get("entries", []))
    if isinstance(result, dict) and "pluginID" in result:
        return "\n".join(f"{k:<18} {v}" for k, v in result.items())
    if command == "ping":
        return f"pong: epoch {result['epoch']}, version {result['version']}"
    return json.dumps(result, indent=2)


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """When argv names a control command, only that subcommand is built (each costs ~0.5 ms of a ~40 ms call);
    otherwise (help, tail, a typo) all of them, so help and errors list every command."""
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(prog="omnictl", description="control the omni dev-server broker")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--endpoint", help="control socket (default: $OMNI_CONTROL or ipc://<runtime>/control.sock)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per try (default 5)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    named = next((a.replace("-", "_") for a in argv if not a.startswith("-")), "")
    for name, cmd in COMMANDS.items():
        if named in COMMANDS and name != named:
            continue
        p = sub.add_parser(name.replace("_", "-"), help=(cmd.__doc__ or "").split("\n")[0], description=cmd.__doc__)
        p.set_defaults(command_name=name)
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
    tail.add_argument("plugin", nargs="?", help="only this plugin")
    tail.add_argument("--topic", action="append", default=[], help="only this topic (repeatable)")
    tail.set_defaults(command_name="tail")
    ext = sub.add_parser("run-external", help="run a go-plugin binary yourself and publish its .devinfo",
                         add_help=False)
    ext.set_defaults(command_name="run-external")
    sub.add_parser("curve-keygen", help="create CURVE keys for TCP endpoints (omnictl curve-keygen DIR)")
    return parser


def _tail(args: argparse.Namespace, client) -> int:
    from .client import Subscriber
    sub = Subscriber(client, topics=tuple(args.topic))
    try:
        for ev in sub.events():
            if args.plugin and ev.meta.pluginID != args.plugin:
                continue
            if args.json:
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
               f"grpc={p['grpcConnected']} worker={p.get('workerStatus')}"
    if ev.topic.endswith("/log"):
        return " | ".join(f"[{e['source']}/{e['level']}] {e['message']}" for e in p)
    if ev.topic.endswith("/error"):
        return "; ".join(f"{e['file']}:{e['line']}:{e['column']}: {e['message']}" for e in p["errors"])
    return json.dumps(p)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "run-external" in argv:
        i = argv.index("run-external")
        from .run_external import main as run_external
        return run_external(argv[i + 1:])
    if argv[:1] == ["curve-keygen"]:
        if len(argv) != 2:
            print("usage: omnictl curve-keygen DIR", file=sys.stderr)
            return EXIT_USAGE
        from .security import keygen
        public, secret = keygen(argv[1])
        print(f"wrote {public} and {secret}; set OMNI_CURVE_DIR={argv[1]} for the service and its clients")
        return EXIT_OK
    args = _build_parser(argv).parse_args(argv)
    if args.command_name == "tail":
        from .client import BrokerUnavailable, Client
        client = Client(args.endpoint, timeout=args.timeout)
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
    wait = cmd.timeout + 2 if cmd.forward else args.timeout
    reply, tries = _call_stdlib(args.endpoint, cmd.name, props, wait)
    if reply is None:
        from .client import BrokerUnavailable
        try:
            reply = _call_pyzmq(args.endpoint, args.timeout, cmd.name, props, wait, RETRIES - tries)
        except BrokerUnavailable as e:
            print(f"omnictl: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    if reply.get("status") != "ok":
        code, reason = reply.get("code", ""), reply.get("reason", "")
        if args.json:
            print(json.dumps({"status": "error", "code": code, "reason": reason}))
        else:
            print(f"omnictl {cmd.name}: {code}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    result = reply.get("result")
    print(json.dumps(result, indent=2) if args.json else _human(cmd.name, result))
    return EXIT_OK


def _call_stdlib(endpoint: str | None, command: str, props: dict, wait: float) -> tuple[dict | None, int]:
    """(reply as a dict, tries used) over omnibroker.zmtp, without importing pyzmq or msgspec. The reply is None
    when that path cannot be used (not ipc, nobody listening yet, a surprise on the wire, no answer in time): then
    the pyzmq client takes over with the tries left (Lazy Pirate) and its error messages."""
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
