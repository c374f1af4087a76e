"""`logs` control command."""
from ..errors import CommandError, ErrorCode
from .base import PLUGIN, Command, Prop

SOURCES = ("vite", "go-build", "go-watch", "manager", "plugin")


class Logs(Command):
    """The last log entries of a plugin (Omniview: GetDevServerLogs): at most `count` (<= 5,000), the newest that fit
    in a 1 MiB reply; `omitted` says how many of the `count` asked for did not fit."""
    name = "logs"
    properties = {"plugin": PLUGIN, "count": Prop(int, "how many entries (default 200)", default=200),
                  "source": Prop(str, "only this source: " + ", ".join(SOURCES))}
    forward = True

    def validate(self, props):
        from ..protocol import MAX_LOG_COUNT
        out = super().validate(props)
        if not 0 <= out["count"] <= MAX_LOG_COUNT:
            raise CommandError(ErrorCode.BAD_PROPERTY, f"logs: count must be between 0 and {MAX_LOG_COUNT} "
                                                       f"(MAX_LOG_COUNT), not {out['count']}")
        if out.get("source") not in (None, *SOURCES):
            raise CommandError(ErrorCode.BAD_PROPERTY, f"unknown log source {out['source']!r}")
        return out

    async def work(self, devserver, props):
        """The newest entries that fit in a control reply; `omitted` says how many older ones did not."""
        from .. import protocol
        entries = devserver.ctx.logs.tail(props.count, props.source)
        budget, kept = protocol.MAX_REPLY_BYTES - 4096, 0
        for entry in reversed(entries):
            budget -= len(protocol.encode(entry)) + 1
            if budget < 0:
                break
            kept += 1
        return {"entries": protocol.to_builtins(entries[len(entries) - kept:]), "omitted": len(entries) - kept}
