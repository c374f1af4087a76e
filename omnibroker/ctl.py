"""omnictl: a thin CLI over the client library; one subcommand per control command (built from the command table),
plus `tail` (live events) and `run-external`.

Exit codes: 0 ok, 1 the broker answered with an error, 2 usage, 3 the broker did not answer.
Imports stay light (no asyncio, grpc or supervisor) so one call costs little more than the interpreter start.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

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
    """Full help lists every command; otherwise only the invoked one gets its options built (start-up time)."""
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(prog="omnictl", description="control the omni dev-server broker")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--endpoint", help="control socket (default: $OMNI_CONTROL or ipc://<runtime>/control.sock)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per try (default 5)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = {a.replace("-", "_") for a in argv if not a.startswith("-")}
    for name, cmd in COMMANDS.items():
        if wanted & set(COMMANDS) and name not in wanted:
            sub.add_parser(name.replace("_", "-"), help=(cmd.__doc__ or "").split("\n")[0])
            continue
        p = sub.add_parser(name.replace("_", "-"), help=(cmd.__doc__ or "").split("\n")[0], description=cmd.__doc__)
        p.set_defaults(command_name=name)
        for key, prop in cmd.properties.items():
            if prop.positional:
                p.add_argument(key, help=prop.help)
            elif prop.type is bool:
                p.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=None, help=prop.help)
            elif prop.type is dict:
                p.add_argument(f"--{key}", type=json.loads, help=prop.help + " (JSON)")
            else:
                conv = float if isinstance(prop.type, tuple) else prop.type
                p.add_argument(f"--{key}", type=conv, help=prop.help)
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
    from .client import BrokerUnavailable, Client, CommandFailed
    from .commands import COMMANDS

    client = Client(args.endpoint, timeout=args.timeout)
    try:
        if args.command_name == "tail":
            return _tail(args, client)
        cmd = COMMANDS[args.command_name]
        props = {k: getattr(args, k) for k in cmd.properties if getattr(args, k, None) is not None}
        if "path" in props:     # the broker runs elsewhere: a path means what it means in this shell
            import os
            props["path"] = os.path.abspath(os.path.expanduser(props["path"]))
        try:
            result = client.call(cmd.name, wait=cmd.timeout + 2 if cmd.forward else None,
                                 **props)
        except CommandFailed as e:
            if args.json:
                print(json.dumps({"status": "error", "code": e.code, "reason": e.reason}))
            else:
                print(f"omnictl {cmd.name}: {e.code}: {e.reason}", file=sys.stderr)
            return EXIT_ERROR
        print(json.dumps(result, indent=2) if args.json else _human(cmd.name, result))
        return EXIT_OK
    except BrokerUnavailable as e:
        print(f"omnictl: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
