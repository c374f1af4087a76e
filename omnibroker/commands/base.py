"""What a control command is: its name, its properties (typed, required or not, with help), its docstring (shown by
`omnictl <name> --help` and docs), and both halves of its work: `execute` runs in the broker (and hands the policy to
a broker method), `work` runs in the plugin's worker for a forwarded command. Circus-style: one module per command,
one table, read by omnictl, the broker and the worker."""
from __future__ import annotations

from ..errors import CommandError, ErrorCode

TYPE_CHECKING = False       # not typing's: importing typing costs each omnictl call ~3 ms; type checkers honour this
if TYPE_CHECKING:
    from typing import Any

    from ..broker import Broker
    from ..protocol import Forwarded


class Prop:
    def __init__(self, type_: type | tuple[type, ...], help: str, required: bool = False, default: Any = None,
                 positional: bool = False):
        self.type = type_
        self.help = help
        self.required = required
        self.default = default
        self.positional = positional


PLUGIN = Prop(str, "plugin id", required=True, positional=True)


class Command:
    name: str = ""
    properties: dict[str, Prop] = {}
    # Executed by the plugin's worker (forwarded by the broker, `work` there) rather than by the broker itself.
    forward: bool = False
    # Changes the plugin's mode: runs one at a time per plugin (never globally: circus's lesson), in the broker and,
    # when forwarded, in the worker (under its lock, within its SERIAL_BUDGET).
    exclusive: bool = False
    # Wants the plugin running: a worker program held stopped in supervisord is started again for it.
    starts_worker: bool = False
    # How long the broker waits for the worker's answer.
    timeout: float = 10.0
    # Answered on the spot by `run` (no task, no await): reads of the broker's own state.
    immediate: bool = False

    def validate(self, props: dict[str, Any]) -> dict[str, Any]:
        """Check property names and types; fill defaults. Unknown properties are refused (typos are bugs)."""
        unknown = set(props) - set(self.properties)
        if unknown:
            raise CommandError(ErrorCode.BAD_PROPERTY,
                               f"{self.name}: unknown properties {sorted(unknown)}; known: {sorted(self.properties)}")
        out: dict[str, Any] = {}
        for key, prop in self.properties.items():
            if key not in props or props[key] is None:
                if prop.required:
                    raise CommandError(ErrorCode.BAD_PROPERTY, f"{self.name}: property {key!r} is required")
                if prop.default is not None:
                    out[key] = prop.default
                continue
            value = props[key]
            types = prop.type if isinstance(prop.type, tuple) else (prop.type,)
            if isinstance(value, bool) and bool not in types:
                ok = False
            elif int in types and isinstance(value, bool):
                ok = bool in types
            else:
                ok = isinstance(value, types)
            if not ok:
                names = " or ".join(t.__name__ for t in types)
                raise CommandError(ErrorCode.BAD_PROPERTY,
                                   f"{self.name}: property {key!r} must be {names}, not {type(value).__name__}")
            out[key] = value
        return out

    def run(self, broker: "Broker", props: dict[str, Any]) -> Any:
        """The whole command, for `immediate` ones."""
        raise NotImplementedError

    async def execute(self, broker: "Broker", props: dict[str, Any]) -> Any:
        """The broker half. Default for forwarded commands: hand the request to the plugin's worker and return its
        result."""
        return await broker.forward(self, props)

    async def work(self, devserver: Any, props: "Forwarded") -> Any:
        """The worker half of a forwarded command, on the plugin's DevServer (omniworker/devserver.py); None means
        "reply with the plugin's state"."""
        raise NotImplementedError


class ModeCommand(Command):
    """A command that changes the plugin's mode (start, stop, restart, attach, detach). Its broker half is the
    broker's one mode policy, `Broker.change_mode` (desired state, Vite port, persistence, then the worker); its worker
    half is the DevServer method of the same name. One at a time per plugin, in the broker and in the worker."""
    properties = {"plugin": PLUGIN}
    forward = True
    exclusive = True
    timeout = 30.0
    mode: str | None = None             # the desired mode it records; None: the current one (restart)
    only_from: str | None = None        # it acts only on a plugin in this mode (detach: "external")

    async def execute(self, broker, props):
        return await broker.change_mode(self, props, self.mode, only_from=self.only_from)

