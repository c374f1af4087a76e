"""`logs` control command."""
from ..errors import CommandError, ErrorCode
from .base import PLUGIN, Command, Prop


class Logs(Command):
    """The last log entries of a plugin (Omniview: GetDevServerLogs): at most `count` (<= 5,000), the newest that fit
    in a 1 MiB reply; `omitted` says how many of the `count` asked for did not fit."""
    name = "logs"
    properties = {"plugin": PLUGIN, "count": Prop(int, "how many entries (default 200)", default=200),
                  "source": Prop(str, "only this source: vite, go-build, go-watch, manager, plugin")}
    forward = True

    def validate(self, props):
        from ..protocol import MAX_LOG_COUNT
        out = super().validate(props)
        if not 0 <= out["count"] <= MAX_LOG_COUNT:
            raise CommandError(ErrorCode.BAD_PROPERTY, f"logs: count must be between 0 and {MAX_LOG_COUNT} "
                                                       f"(MAX_LOG_COUNT), not {out['count']}")
        return out

