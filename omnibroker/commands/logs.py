"""`logs` control command."""
from .base import PLUGIN, Command, Prop


class Logs(Command):
    """The last log entries of a plugin (Omniview: GetDevServerLogs)."""
    name = "logs"
    properties = {"plugin": PLUGIN, "count": Prop(int, "how many entries (default 200)", default=200),
                  "source": Prop(str, "only this source: vite, go-build, go-watch, manager, plugin")}
    forward = True

