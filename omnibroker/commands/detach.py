"""`detach` control command."""
from .base import PLUGIN, Command


class Detach(Command):
    """Leave external mode; the external plugin process keeps running (a managed plugin stays managed)."""
    name = "detach"
    properties = {"plugin": PLUGIN}
    forward = True
    exclusive = True

    async def execute(self, broker, props):
        return await broker.change_mode(self, props, "idle", only_from="external")

    async def work(self, devserver, props):
        await devserver.detach()
