"""`reload` control command."""
from .base import Command


class Reload(Command):
    """Read omni.toml again and apply it without restarting anything (also done when the file changes): entries new
    in the file are registered, entries gone from it removed, changed ones restarted with the new spec. Returns
    `{"configError", "added", "removed", "changed"}`."""
    name = "reload"
    properties = {}
    timeout = 30.0

    async def execute(self, broker, props):
        return await broker.config.reload()
