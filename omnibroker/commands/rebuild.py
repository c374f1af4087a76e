"""`rebuild` control command."""
from .base import PLUGIN, Command


class Rebuild(Command):
    """Force a Go build and plugin reload (Omniview: RebuildPlugin). Answers once the build is queued:
    `{"pluginID", "accepted": true}`; its progress, errors and the reload arrive as events."""
    name = "rebuild"
    properties = {"plugin": PLUGIN}
    forward = True

    async def execute(self, broker, props):
        await broker.forward(self, props)
        return {"pluginID": props["plugin"], "accepted": True}

    async def work(self, devserver, props):
        await devserver.rebuild()
